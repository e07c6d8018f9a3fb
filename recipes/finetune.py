"""Fine-tune an encoder for classification (MAE recipe: layer-wise lr decay, mixup/cutmix, RandAugment).

    python recipes/finetune.py --checkpoint output/pretrain/checkpoint-last.pth --data ../shared/data/cifar10_small.npz
    torchrun --nproc_per_node 8 recipes/finetune.py --model crate_base --pretrained --data /path/to/imagenet

All logic lives in ``whitebox.train.finetune`` (see ``--help``).
"""

import sys
from pathlib import Path

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.train.finetune import main

if __name__ == "__main__":
    main()
