"""Argument types shared by every whitebox program (recipes, ``python -m whitebox.*``).

Each factory returns an ``argparse`` ``type=`` callable that checks a flag's value when the command
line is parsed, before any work starts, and fails with the allowed values in the message::

    parser.add_argument("--lr", type=number(gt=0))  # --lr inf: must be a finite number > 0, got 'inf'
    parser.add_argument("--seed", type=integer(ge=0, le=2**63 - 1))

This module itself imports neither torch nor timm, so ``--help`` and argument errors answer at once.
Relations between flags (``--min-lr`` at most ``--lr``) are checked by the program with
:func:`require`, which raises ``ValueError`` naming both flags.

A flag that does not define a run (where and how it runs, not what it computes: ``--output``,
``--workers``, ``--log-every``) says so where it is defined, with :func:`free`; a run may resume
with another value of it, while any other changed flag is refused unless ``--force-resume``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DEVICE_PATTERN",
    "HelpFormatter",
    "add_model_kwargs_arg",
    "add_threads_arg",
    "answering_help",
    "choice",
    "device",
    "help_requested",
    "integer",
    "model_kwargs",
    "number",
    "program_name",
    "quiet_interrupts",
    "require",
    "running_program",
    "start_program",
    "started",
]

DEVICE_PATTERN = re.compile(r"^(auto|(cpu|mps|cuda|xpu)(:\d+)?)$")


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    pairs = [(">", gt), (">=", ge), ("<", lt), ("<=", le)]
    return " and ".join(f"{op} {v if isinstance(v, int) else f'{v:g}'}" for op, v in pairs if v is not None)


def _check(value: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    return not (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (lt is not None and not value < lt)
        or (le is not None and not value <= le)
    )


def number(
    gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> Callable[[str], float]:
    """A finite float within the given bounds (``nan`` and ``inf`` are always refused)."""
    rng = _bounds(gt, ge, lt, le)
    want = "a finite number" + (f" {rng}" if rng else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if not math.isfinite(value) or not _check(value, gt, ge, lt, le):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def integer(
    gt: int | None = None, ge: int | None = None, lt: int | None = None, le: int | None = None
) -> Callable[[str], int]:
    """A whole number within the given bounds, written as digits (``1e23`` and ``2.5`` are refused)."""
    rng = _bounds(gt, ge, lt, le)
    want = "a whole number" + (f" {rng}" if rng else "")

    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        value = int(text)
        if not _check(value, gt, ge, lt, le):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def device(text: str) -> str:
    """``auto``, or ``cpu``, ``mps``, ``cuda``, ``xpu`` with an optional ``:N`` (as torch takes them; availability
    is checked later)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N (any device with :N, e.g. cpu:0), got {text!r}"
        )
    return text


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (RFC 8259); model arguments must be finite")


def _finite(v: object) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple, dict)):
        return all(_finite(x) for x in (v.values() if isinstance(v, dict) else v))
    return True


def _literal(text: str) -> object:
    """A KEY=VALUE value: JSON (``true``, ``null``, ``[1, 2]``), else a Python literal, else the string."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare word: global_pool=avg


def model_kwargs(text: str) -> dict[str, object]:
    """One word of ``--model-kwargs``: a JSON object (``'{"depth": 2}'``) or ``KEY=VALUE`` (``depth=2``).

    A VALUE is read as JSON, else as a Python literal, else kept as a string (``global_pool=avg``).
    Non-finite numbers (``NaN``, ``Infinity``, ``1e999``) are refused: model arguments must be finite.
    Raises ``argparse.ArgumentTypeError`` naming both allowed forms.
    """
    if text.strip().startswith(("{", "[")):
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err}: {text!r}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"expected a JSON object such as '{{\"lambd\": 5.0}}', or KEY=VALUE words, got {text!r}"
            )
    else:
        key, sep, raw = text.partition("=")
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(
                f"must be a JSON object ('{{\"depth\": 2}}') or KEY=VALUE words (depth=2 global_pool=avg), got {text!r}"
            )
        value = {key: _literal(raw)}
    if big := [k for k, v in value.items() if not _finite(v)]:  # 1e999 reads as inf
        raise argparse.ArgumentTypeError(f"{', '.join(big)}: not a finite number: {text!r}")
    return value


class _MergeKwargs(argparse.Action):
    """Merges the words of ``--model-kwargs`` (and repeated flags) into one dict; later keys win."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest, None) or {})
        for part in values or []:
            merged.update(part)
        setattr(namespace, self.dest, merged)


def add_model_kwargs_arg(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    *aliases: str,
    default: dict[str, object] | None = None,
    help: str = "more create_model arguments",
) -> argparse.Action:
    """``--model-kwargs`` in every program: a JSON object or ``KEY=VALUE`` words, merged into one dict.

    ``--model-kwargs '{"depth": 2}'`` and ``--model-kwargs depth=2 global_pool=avg`` give the same dict;
    it takes every word that follows it (give positional arguments before it)."""
    return group.add_argument(
        "--model-kwargs",
        *aliases,
        nargs="*",
        type=model_kwargs,
        action=_MergeKwargs,
        default=default,
        metavar="KEY=VALUE",
        help=help + " (KEY=VALUE words, values read as JSON / Python literals, or one JSON object)",
    )


def choice(allowed: Sequence[str]) -> Callable[[str], str]:
    """One of ``allowed``, listed in the message (``choices=`` would print Python reprs and no metavar)."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: for relations between flags."""
    if not condition:
        raise ValueError(message)


# a seed goes into torch.manual_seed (seed + rank, up to 2**64 - 1), NumPy (seed mod 2**32) and splitmix64
seed = integer(ge=0, le=2**63 - 1)

# dest names of the flags declared with ``free``; ``whitebox.train.run`` compares every other recorded flag
FREE_FLAGS: set[str] = set()


def free(action: argparse.Action) -> argparse.Action:
    """Declare the flag ``action`` (what ``add_argument`` returns) as one that does not define a run.

    ``free(group.add_argument("--workers", ...))``: resuming with another ``--workers`` is the same run.
    """
    action.defines_run = False  # type: ignore[attr-defined]
    FREE_FLAGS.add(action.dest)
    return action


__all__ += ["FREE_FLAGS", "free", "seed"]  # what the recipes declare about their flags


# ----------------------------------------------------------------------------- one style for every program
class HelpFormatter(argparse.HelpFormatter):
    """Every program's ``--help``: a flag's default shown once, as ``(default: X)``, where it has one.

    Not shown when the help already says it (``"(default 400, or ...)"``: a default that depends on other
    flags), nor for ``None`` / ``False`` / empty defaults (an unset flag, a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ([], {}, "", argparse.SUPPRESS)
        if "default" in text or unset or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def add_threads_arg(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> argparse.Action:
    """``--threads N``: CPU threads for torch in this process (every program has it)."""
    return free(
        group.add_argument(
            "--threads",
            type=integer(gt=0),
            default=None,
            metavar="N",
            help="CPU threads for torch per process (unset: torch's choice; 1 avoids spin-waits on a busy CPU)",
        )
    )


# the programs: ``python -m whitebox.NAME``, ``whitebox-NAME`` and ``recipes/NAME.py``
MODULE_PROGRAMS = ("validate", "inference", "benchmark", "analysis", "flops", "convert")
RECIPES = ("pretrain", "finetune", "linprobe")
_HELP = ("-h", "--h", "--he", "--hel", "--help")  # argparse accepts --help's prefixes


def program_name(module: str, argv0: str | None = None) -> str:
    """The usage line's name of a ``python -m MODULE`` program: what the user typed.

    ``whitebox-validate`` when run as that console script (``argv0``: ``sys.argv[0]``), else
    ``python -m MODULE`` (argparse's own guess would be ``validate.py`` or ``__main__.py``)."""
    argv0 = (sys.argv[0] if sys.argv else "") if argv0 is None else argv0
    name = Path(argv0).name
    if name.startswith("whitebox-"):
        return name.removesuffix(".exe")
    return f"python -m {module}"


def help_requested(args: Sequence[str]) -> bool:
    """Whether a command line's arguments (without the program) ask for ``--help`` (before any ``--``)."""
    args = list(args)
    if "--" in args:
        args = args[: args.index("--")]
    return any(a in _HELP for a in args)


def _module_run(orig_argv: Sequence[str]) -> str | None:
    """The module of ``python [options] -m MODULE ...``, else None."""
    it = iter(orig_argv[1:])
    for a in it:
        if a == "-m":
            return next(it, None)
        if a.startswith("-m"):
            return a[2:]
        if a in ("-X", "-W", "--check-hash-based-pycs"):
            next(it, None)  # an option with a separate value
        elif a == "-c" or not a.startswith("-"):
            return None  # a command string or a script
    return None


def running_program(argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None) -> str | None:
    """The name of the whitebox program this process runs (``'validate'``, ``'pretrain'``), else None.

    Our programs are ``python -m whitebox.NAME`` (NAME in :data:`MODULE_PROGRAMS`, or
    ``whitebox.recipes.NAME``), the ``whitebox-*`` console scripts, and this package's ``recipes/NAME.py``
    files (NAME in :data:`RECIPES`). Any other process (a user's script, a test, ``python -c``) is not.
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    module = _module_run(orig_argv)
    if module is not None:
        module = module.removesuffix(".__main__")
        for prefix, names in (("whitebox.", MODULE_PROGRAMS), ("whitebox.recipes.", RECIPES)):
            if module.startswith(prefix) and module[len(prefix) :] in names:
                return module[len(prefix) :]
        return None
    if not argv or not argv[0]:
        return None
    script = Path(argv[0])
    name = script.stem.removeprefix("whitebox-")
    if script.name.startswith("whitebox-") and name in MODULE_PROGRAMS + RECIPES:
        return name  # a console script (whitebox-pretrain, whitebox-pretrain.exe)
    if script.suffix != ".py" or script.stem not in RECIPES:
        return None
    here = Path(__file__).resolve().parent
    try:
        folder = script.resolve().parent
    except OSError:
        return None
    return script.stem if folder in (here.parent / "recipes", here / "recipes") else None


def answering_help(argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None) -> bool:
    """True when this process is one of whitebox's programs (:func:`running_program`) asked for ``--help``.

    ``whitebox/__init__.py`` then skips importing torch and timm: the program prints its help (built by
    torch-free parsers) and exits, in a fraction of a second instead of seconds.
    """
    argv = sys.argv if argv is None else argv
    return bool(argv) and help_requested(argv[1:]) and running_program(argv, orig_argv) is not None


def quiet_interrupts() -> None:
    """A Ctrl-C before a program's own handling starts (while torch loads) ends with one line, no traceback.

    Installed by ``whitebox/__init__.py`` in our programs' processes only; other exceptions print as usual.
    While the program starts, SIGINT exits at once (status 130) instead of raising ``KeyboardInterrupt``:
    raised inside torch's native import code, that exception aborts the process ("terminate called after
    throwing an instance of 'pybind11::error_already_set'"). :func:`started` ends that window."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _interrupt_hook
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt_while_starting)


def started() -> None:
    """The program's own handling begins: a Ctrl-C raises ``KeyboardInterrupt`` again."""
    if signal.getsignal(signal.SIGINT) is _interrupt_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted while starting: nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def _interrupt_hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted while starting: nothing was written", file=sys.stderr)
        return  # Python still exits with the SIGINT status (130 in a shell)
    sys.__excepthook__(kind, value, tb)  # type: ignore[arg-type]


def start_program(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None = None) -> None:
    """What a program does before importing torch: answer ``--help`` (and exit), and make a Ctrl-C during
    the imports end with one line instead of a traceback.

    ``build_parser`` must not import torch or timm. Call it first thing in ``if __name__ == "__main__"``
    paths and console-script entry points.
    """
    quiet_interrupts()
    args = sys.argv[1:] if argv is None else list(argv)
    if help_requested(args):
        build_parser().parse_args(args)  # prints the help (or a flag error) and exits
