"""The training programs: ``pretrain.py``, ``finetune.py``, ``linprobe.py`` (run them as scripts).

A package only so that tests and benchmarks can import them (``import recipes.pretrain``).
"""
