"""MAE pretraining for CRATE-MAE / ViT-MAE: one process, or ``torchrun`` on many GPUs and nodes.

    python recipes/pretrain.py                      # demo: small CRATE-MAE on bundled photos, CPU, ~1 min
    python recipes/pretrain.py --model crate_mae_base --data /path/to/imagenet --epochs 400
    torchrun --nproc_per_node 8 recipes/pretrain.py --model crate_mae_base --data /path/to/imagenet

All logic lives in ``whitebox.train.pretrain`` (see ``--help``).
"""

import sys
from pathlib import Path

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.train.pretrain import main

if __name__ == "__main__":
    main()
