"""Linear probe of a frozen encoder: class token or mean-pooled features, BatchNorm + linear classifier.

    python recipes/linprobe.py --checkpoint output/pretrain/checkpoint-last.pth --data ../shared/data/cifar10_small.npz
    python recipes/linprobe.py --model crate_mae_base --pretrained --data cifar10 --download --img-size 32

All logic lives in ``whitebox.train.linprobe`` (see ``--help``).
"""

import sys
from pathlib import Path

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.train.linprobe import main

if __name__ == "__main__":
    main()
