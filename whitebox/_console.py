"""The installed programs (``[project.scripts]`` in pyproject.toml): ``whitebox-pretrain`` and the others.

The recipes live in ``recipes/`` of a clone (``python recipes/pretrain.py``) and in the wheel as
``whitebox.recipes`` (pyproject maps the folder into the package); an entry point finds them either
way. A user error ends with ``error: MESSAGE`` and exit status 1, as in ``python recipes/...``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._programs import run_program
from .cli import start_program
from .recipe_args import finetune_parser, linprobe_parser, pretrain_parser


def recipe(name: str) -> ModuleType:
    """The recipe module ``name`` (``pretrain``, ``finetune``, ``linprobe``): installed, else from a clone."""
    try:
        return importlib.import_module(f"whitebox.recipes.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("whitebox.recipes", f"whitebox.recipes.{name}"):
            raise  # a missing dependency inside the recipe: say so, do not hide it
    return importlib.import_module(f"recipes.{name}")


def pretrain() -> int:
    start_program(pretrain_parser)  # --help before the recipe (and torch) is imported
    return run_program(recipe("pretrain").main)


def finetune() -> int:
    start_program(finetune_parser)  # --help before the recipe (and torch) is imported
    return run_program(recipe("finetune").main)


def linprobe() -> int:
    start_program(linprobe_parser)  # --help before the recipe (and torch) is imported
    return run_program(recipe("linprobe").main)


def analysis() -> int:
    from .analysis.__main__ import cli

    return cli()
