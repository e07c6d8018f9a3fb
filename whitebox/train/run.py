"""What the training recipes share: an output folder that belongs to one run, and the training loop.

``RunFolder``: while a run holds its output folder (an ``flock`` on ``.run.lock``, which the
kernel releases when the process dies, so a crashed run never leaves it stuck), a second run into
the same folder stops at once with a message naming the folder and the holder.

``TrainLoop``: one optimizer step per ``accum_iter`` micro-batches, metric rows at fixed steps,
evaluation and checkpoints at milestones (epoch ends, the run's end, every tenth of a run shorter than
an epoch), every ``--save-every`` steps and at the stop; exact resume. At a checkpoint the files are
written in the order best, last, evaluation row, and the last checkpoint carries the evaluation rows,
so after a kill at any moment: the last checkpoint never claims a best that no file holds; ``--resume
auto`` takes the newest loadable checkpoint (best is newer when the run died between the two writes);
``eval.jsonl`` is rewritten from it.
Resuming with other run-defining arguments (data, seed, schedule, ...) is refused unless
``--force-resume``; a flag declared with ``whitebox.cli.free`` may change; the batch is compared as the
global batch (batch x accumulation x ranks), so 4 x 2 ranks resumes as 8 x 1. Resuming a finished
run reports its result and does nothing.

Non-finite runs: every step checks the loss and the gradient norm (one small all-reduce, so all ranks
agree). A non-finite step is skipped (no optimizer step; the weights stay as they were) while at most
``--max-nonfinite-steps`` (default 0) come in a row; the next one stops the run with
:class:`NonFiniteError`, which names the step, the values and what to try. Before any checkpoint the
weights and the evaluation are checked: a non-finite one is never written, so ``checkpoint-last.pth``
stays the last finite state. Under fp16 an overflowing gradient is first the ``GradScaler``'s business
(it skips the step and halves the loss scale); once the scale is at or below ``min_loss_scale`` (1: the
gradient overflows fp16 unscaled) an overflowing step counts as non-finite too, so a gradient that
overflows at every step stops the run after at most log2(scale) + ``--max-nonfinite-steps`` + 1 steps
(17 from the default initial scale 65536) instead of lowering the scale without end.

Signals: on the first SIGINT or SIGTERM every rank finishes its step, rank 0 writes
``checkpoint-last.pth`` at that step (no evaluation), the lock is released, one line says how to
resume, and the program exits 130 (SIGINT) or 143 (SIGTERM) through :class:`StoppedBySignal`. A
second SIGINT stops at once (``KeyboardInterrupt``; atomic writes leave no partial file); a repeated
SIGTERM is ignored, since schedulers may deliver it both directly and through ``torchrun``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from registry import UnsafeCheckpointError, apply_state_dict

from ..cli import FREE_FLAGS, started
from ..io import write_json
from .checkpoint import CHECKPOINT_NAMES, atomic_save, find_resume, get_rng_state, remove_stale_temps, set_rng_state
from .common import amp_context
from .distributed import DistInfo, all_reduce_mean, barrier
from .logger import MetricsLogger, Progress
from .schedule import set_lr, warmup_cosine

LOCK_NAME = ".run.lock"
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as a shell reports it


class FolderInUseError(RuntimeError):
    """Another run holds the output folder."""


class OutputFolderError(ValueError):
    """``--output`` cannot be a run folder (a file, a dangling link, a path under a file, not writable)."""


class NonFiniteError(ArithmeticError):
    """The run went non-finite (loss, gradient norm, weights or evaluation); nothing non-finite was saved."""


class StoppedBySignal(Exception):
    """The run stopped on SIGINT / SIGTERM after checkpointing; ``exit_status`` is 128 + the signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum, self.exit_status = signum, 128 + signum


class RunFolder:
    """``with RunFolder(path, dist):`` — the folder belongs to this run (rank 0 holds the lock for all ranks)."""

    def __init__(self, path: str | os.PathLike[str], dist: DistInfo | None = None) -> None:
        self.path, self.dist, self._fd = Path(path), dist, None

    def __enter__(self) -> Path:
        error = self._acquire() if self.dist is None or self.dist.is_main else None
        if self.dist is not None and self.dist.distributed:
            box = [error]
            torch.distributed.broadcast_object_list(box, src=0)
            error = box[0]
        if error:
            in_use, message = error
            raise (FolderInUseError if in_use else OutputFolderError)(message)
        return self.path

    def _acquire(self) -> tuple[bool, str] | None:
        """``None`` once the folder is this run's, else ``(in use by another run, message)``."""
        if problem := output_problem(self.path):
            return False, problem
        try:
            import fcntl
        except ImportError:  # not POSIX
            warnings.warn(f"cannot lock {self.path} on this platform: do not start two runs into it", stacklevel=3)
            return None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            return False, f"--output {self.path}: cannot create the folder or its lock file: {err.strerror or err}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            return True, (
                f"the output folder {self.path} is in use by another run ({holder}); wait for it to finish, stop it, "
                "or choose another --output"
            )
        self._fd = fd
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return None

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a run folder, or ``None``: checked before any work starts."""
    if path.is_symlink() and not path.exists():
        return (
            f"--output {path} is a symbolic link to {os.readlink(path)}, which points nowhere (the target does not "
            "exist); create the target folder, remove the link, or choose another --output"
        )
    if path.exists() and not path.is_dir():
        return f"--output {path} is a file, not a folder; give a folder (it is created when missing)"
    parent = path
    while not parent.exists() and parent != parent.parent:  # the nearest part of the path that exists
        parent = parent.parent
    if parent != path and not parent.is_dir():
        return f"--output {path} cannot be created: {parent} is a file, not a folder"
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        return f"--output {path}: no permission to write in {parent}; choose a folder you can write to"
    return None


def run_main(main: Callable[[], Any]) -> None:
    """A recipe's ``__main__``: an error the user can act on (bad input, a file, a folder in use, a
    refused resume, a non-finite run) ends the program with ``error: MESSAGE`` and exit status 1, not a
    traceback; a stop by signal exits 130 (SIGINT) or 143 (SIGTERM) after its one line."""
    started()  # the imports are done: from here a Ctrl-C is the program's to handle
    try:
        main()
    except (ValueError, OSError, FolderInUseError, UnsafeCheckpointError, NonFiniteError) as err:
        sys.exit(f"error: {err}")
    except StoppedBySignal as stop:
        if str(stop):
            print(stop, file=sys.stderr)
        sys.exit(stop.exit_status)
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C in it
        print(
            "interrupted: stopped at once; checkpoints in --output are whole (written atomically), resume with "
            "--resume auto",
            file=sys.stderr,
        )
        sys.exit(SIGNAL_EXIT[signal.SIGINT])


class SignalStop:
    """``with SignalStop() as stop:`` — the first SIGINT / SIGTERM sets ``stop.signum`` (the loop finishes its
    step and checkpoints); a second SIGINT raises ``KeyboardInterrupt`` at once; a repeated SIGTERM is ignored.
    Data-loader workers forked inside the block ignore both (a terminal's Ctrl-C reaches them too), so
    the step in flight can finish. Outside the main thread (where Python cannot install handlers) it does
    nothing."""

    def __init__(self, announce: bool = True) -> None:
        self.signum, self.announce, self._previous = 0, announce, {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNAL_EXIT}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: its parent finishes the step and stops it
            return
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum = signum
            if self.announce:
                print(
                    f"\n{name}: finishing this step, then saving a checkpoint and stopping (Ctrl-C again: at once)",
                    file=sys.stderr,
                    flush=True,
                )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        elif self.announce:
            print(f"{name} again: already stopping after this step", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def finish_line(result: dict[str, Any], metrics: str, world_size: int = 1) -> str:
    """The one line a training program ends with: ``done: step N METRICS | R images/s | T s`` for a finished run
    (the rate only where steps ran), ``stopped after N steps (of M) ...; resume with: COMMAND`` for a stop
    by ``--stop-after``."""
    step, total = result["step"], result["total_steps"]
    if step < total:
        return f"stopped after {step} steps (of {total}){metrics}; resume with: {resume_command(world_size)}"
    rate = f" | {result['mean_images_per_s']:.1f} images/s | {result['wall_s']:.1f} s" if result["wall_s"] else ""
    return f"done: step {step}{metrics}{rate}"


def resume_command(world_size: int) -> str:
    """The command line that resumes this run: this one with ``--resume auto`` (and without ``--overwrite``)."""
    argv, rest = [], list(sys.argv[1:])
    while rest:
        a = rest.pop(0)
        if a in ("--resume", "--stop-after"):
            rest = rest[1:]
        elif not a.startswith(("--resume=", "--stop-after=")) and a != "--overwrite":
            argv.append(a)
    program = sys.argv[0]
    if world_size > 1:
        launcher = ["torchrun", f"--nproc_per_node={world_size}"]
    elif program.endswith(".py"):
        launcher = ["python"]
    else:  # an installed console script (whitebox-pretrain): it runs by its name
        launcher, program = [], os.path.basename(program) if shutil.which(os.path.basename(program)) else program
    return shlex.join([*launcher, program, *argv, "--resume", "auto"])


_PLAIN = (bool, int, float, str)


def _plain(value: Any) -> Any:
    """``value`` as a plain Python ``None``/bool/int/float/str (a list of them for a tuple or list), else
    ``_SKIP``. NumPy and 0-d torch scalars become Python ones (``np.float64`` would otherwise pass as a float
    subclass, and ``np.int64`` be dropped)."""
    if value is None:
        return None
    if isinstance(value, _PLAIN):  # a subclass (np.float64, an IntEnum) becomes its plain base type
        return next(t for t in _PLAIN if isinstance(value, t))(value)
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):  # np.int64, np.bool_
        item = value.item()
        return _plain(item) if isinstance(item, _PLAIN) else _SKIP
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP


_SKIP = object()


def run_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of a run as plain Python values (what a checkpoint records): None, bool, int, float,
    str, or a list of them; NumPy scalars are converted, other values left out."""
    plain = {k: _plain(v) for k, v in vars(args).items()}
    return {k: v for k, v in plain.items() if v is not _SKIP}


def changed_args(recorded: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Run-defining arguments that differ from a checkpoint's, as ``--name now (checkpoint: then)``.

    Flags declared with ``whitebox.cli.free`` are not compared."""
    now = run_args(args)
    keys = sorted(k for k in set(now) & set(recorded) if k not in FREE_FLAGS and now[k] != recorded[k])
    return [f"--{k.replace('_', '-')} {now[k]!r} (checkpoint: {recorded[k]!r})" for k in keys]


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded, FSDP2 DTensor) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


class TrainLoop:
    """The training loop of the recipes; a subclass provides the model and what a step and an evaluation are.

    The subclass sets ``model`` (unwrapped) and ``train_model`` (DDP or compiled), ``optimizer``,
    ``scaler``, ``precision``, ``loader`` over the ``ResumableBatchSampler`` ``sampler``,
    ``steps_per_epoch``, ``total_steps``, ``warmup_steps``, ``base_lr`` and ``effective_batch``, and
    implements ``loss`` (of a micro-batch) and ``evaluate``. ``score`` names the evaluation metric that picks
    ``checkpoint-best.pth`` (``higher_is_better`` says which way).
    """

    name = "train"
    score = "loss"
    higher_is_better = False
    #: Under fp16, a step the ``GradScaler`` skips for overflow at a loss scale at or below this counts as a
    #: non-finite step (DeepSpeed's ``min_loss_scale`` default; fairseq's ``--min-loss-scale`` is the same idea).
    min_loss_scale = 1.0

    def __init__(self, args: argparse.Namespace, dist: DistInfo) -> None:
        self.args, self.dist, self.device, self.out = args, dist, dist.device, Path(args.output)
        self.step, self.best = 0, None
        self.eval_rows: list[dict[str, Any]] = []
        self.last_row: dict[str, Any] = {}
        self.log_sum, self.log_count, self.skipped = 0.0, 0, 0
        self.nonfinite_in_row = self.nonfinite_since_log = 0  # skipped non-finite steps (--max-nonfinite-steps)
        self.saved_step: int | None = None  # the step checkpoint-last.pth holds, once known
        self.stop, self.stop_signum = SignalStop(announce=dist.is_main), 0
        self.logger: MetricsLogger | None = None
        self.evals: MetricsLogger | None = None

    # ----------------------------------------------------------------------------- what a subclass provides
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss of one micro-batch (called under autocast)."""
        raise NotImplementedError

    def evaluate(self, epoch_end: bool) -> dict[str, float]:
        """Metrics at a checkpoint (every rank calls it); must include ``self.score``. ``epoch_end``: a
        milestone (an epoch's end, the run's end, a tenth of a run shorter than an epoch), where pictures
        are worth writing."""
        raise NotImplementedError

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Under DDP, reduce gradients on the last micro-batch only."""
        if self.dist.distributed and not last:
            return getattr(self.train_model, "_orig_mod", self.train_model).no_sync()  # through torch.compile
        return contextlib.nullcontext()

    def train_step(self, batches: list[dict[str, Any]]) -> torch.Tensor | None:
        """One optimizer step over the micro-batches: warmup + cosine lr, scaled backward passes,
        ``--clip-grad``, the scaler's step. Returns the mean loss (on the device), or ``None`` for a
        non-finite step that was skipped (see :meth:`check_step`)."""
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.base_lr, self.args.min_lr)
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            with self.gradient_sync(i == len(batches) - 1):
                with amp_context(self.device, self.precision):
                    loss = self.loss(batch)
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)  # true gradients for the norm (a no-op without fp16)
        if self.args.clip_grad is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        mean = total / len(batches)
        if not self.check_step(mean, norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # under fp16 the non-finite gradients lower the scale, as a skipped step does
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return mean

    def check_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """All ranks agree whether this step is finite and whether a signal asked to stop (one all-reduce).

        Returns ``True`` for a finite step; skips up to ``--max-nonfinite-steps`` non-finite steps in a row
        (``False``); raises :class:`NonFiniteError` at the next. Under fp16 a non-finite gradient counts only at a
        loss scale at or below ``min_loss_scale``; above it the ``GradScaler`` skips the step and halves the scale."""
        grad_bad = ~torch.isfinite(grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None  # the loss scale of this step
        if scale is not None and scale > self.min_loss_scale:
            grad_bad = torch.zeros((), dtype=torch.bool)  # the scaler skips the step and lowers the scale
        bad = (~torch.isfinite(loss)) | grad_bad.to(loss.device)
        flags = torch.stack([loss.float(), grad_norm.float().to(loss.device), bad.float()])
        flags = torch.cat([flags, torch.tensor([float(self.stop.signum)], device=loss.device)])
        flags = all_reduce_mean(flags.to(self.device)).tolist()  # a NaN anywhere stays NaN in the mean
        self.stop_signum = (self.stop.signum or signal.SIGTERM) if flags[3] > 0 else 0  # a signal on any rank
        if flags[2] == 0:
            self.nonfinite_in_row = 0
            return True
        self.nonfinite_in_row += 1
        self.nonfinite_since_log += 1
        step, allowed = self.step + 1, getattr(self.args, "max_nonfinite_steps", 0)
        values = f"loss {flags[0]:.4g}, gradient norm {flags[1]:.4g}"
        if scale is not None and not math.isfinite(flags[1]):
            values += f" at fp16 loss scale {scale:.4g}"
        if self.nonfinite_in_row > allowed:
            what = f"step {step}: {values} (not finite)"
            if scale is not None and math.isfinite(flags[0]):  # a finite loss: the scaler's floor was reached
                what += (
                    f"; the loss scale is at its floor {self.min_loss_scale:.4g} (the GradScaler halves it at every "
                    "overflowing step, which it skips): the gradient overflows fp16 even unscaled"
                )
            raise NonFiniteError(self.nonfinite_message(what))
        if self.dist.is_main:
            print(
                f"warning: step {step}: {values}: skipped, the weights are unchanged ({self.nonfinite_in_row} of "
                f"--max-nonfinite-steps {allowed} in a row)",
                file=sys.stderr,
            )
        return False

    def nonfinite_message(self, what: str) -> str:
        """What went non-finite, what was kept, what to try."""
        if self.saved_step is not None:
            kept = f"{self.out / 'checkpoint-last.pth'} keeps step {self.saved_step}, the last finite state"
        else:
            kept = "no checkpoint was written (nothing finite to keep since the start)"
        tries = [f"a lower learning rate (--lr, now {self.base_lr:.3g}; or --blr)"]
        if self.args.clip_grad is None:
            tries.append("gradient clipping (--clip-grad 1.0)")
        if self.precision == "fp16":
            tries.append("--precision bf16 (fp32's range) or fp32")
        elif self.precision != "fp32":
            tries.append("--precision fp32")
        warmup = "--warmup-steps / --warmup-epochs" if hasattr(self.args, "warmup_steps") else "--warmup-epochs"
        tries.append(f"a longer warmup ({warmup})")
        tries.append("skipping a few such steps (--max-nonfinite-steps N)")
        if self.saved_step is not None:
            then = "; then resume with --resume auto (--force-resume to change the lr or the schedule)"
        else:  # nothing to resume from: start again
            then = "; then start the run again (--overwrite, or another --output)"
        return (
            f"the run went non-finite at {what}; stopped, nothing non-finite was saved: {kept}. Try "
            f"{', '.join(tries)}{then}"
        )

    def on_step(self) -> None:
        """Called after every optimizer step."""

    def record(self) -> dict[str, Any]:
        """More to keep in checkpoints (e.g. the model's name and arguments)."""
        return {}

    def check_resume(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint this run cannot continue."""

    def summary(self) -> dict[str, Any]:
        """What ``args.json`` holds besides the arguments."""
        return {}

    def describe(self) -> str:
        """One line for the log at the start: recipe name, total steps and output folder."""
        return f"{self.name}: {self.total_steps} steps -> {self.out}"

    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model, optimizer) state dicts as written to a checkpoint (a recipe may override, e.g. for FSDP)."""
        return self.model.state_dict(), self.optimizer.state_dict()

    def load_state_dicts(self, ckpt: dict[str, Any], source: str = "") -> None:
        """Load a checkpoint's model and optimizer state (errors name ``source`` and the mismatched keys)."""
        apply_state_dict(self.model, ckpt["model"], source=source)
        self.optimizer.load_state_dict(ckpt["optimizer"])

    # ----------------------------------------------------------------------------- checkpoints and resume
    def state(self) -> dict[str, Any]:
        """The full state (a collective under FSDP and DDP: every rank calls it)."""
        model_state, optim_state = self.state_dicts()
        rng: dict[str, Any] = get_rng_state()
        if self.dist.distributed:  # every rank's, so that a resumed run keeps ranks apart
            per_rank: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(per_rank, rng)
            rng = {"per_rank": per_rank}
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "effective_batch": self.effective_batch,
            "best": self.best,
            "eval_rows": self.eval_rows,
            "last_row": self.last_row,
            "log_sum": self.log_sum,
            "log_count": self.log_count,
            "nonfinite": [self.nonfinite_in_row, self.nonfinite_since_log],
            "rng": rng,
            "args": run_args(self.args),
            "recipe": self.name,
            **self.record(),
        }

    def _save(self, state: dict[str, Any], name: str) -> None:
        remove_stale_temps(self.out / name)  # the folder is this run's alone
        atomic_save(state, self.out / name)

    def check_weights(self) -> None:
        """Refuse to save non-finite weights (every rank calls it; all agree)."""
        named = [*self.model.named_parameters(), *self.model.named_buffers()]
        bad = [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(_local(t)).all())]
        if all_reduce_mean(torch.tensor(float(len(bad)), device=self.device)).item() > 0:
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteError(
                self.nonfinite_message(f"step {self.step}: the weights ({names or 'on another rank'})")
            )

    def checkpoint(self, epoch_end: bool) -> dict[str, Any]:
        """Evaluate, then write ``checkpoint-best.pth`` (when the score improved) before ``checkpoint-last.pth``
        and the evaluation row, each atomically; returns the evaluation row.
        """
        # never save what is not finite: the weights before the evaluation, the evaluation before the files
        self.check_weights()
        metrics = self.evaluate(epoch_end)
        if off := {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}:
            what = ", ".join(f"{k} {v}" for k, v in off.items())
            raise NonFiniteError(self.nonfinite_message(f"step {self.step}: the evaluation ({what})"))
        value = metrics[self.score]
        is_best = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if is_best:
            self.best = value
        skipped = int(all_reduce_mean(torch.tensor(float(self.skipped), device=self.device)) * self.dist.world_size)
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **metrics}
        if skipped:
            row["skipped_images"] = skipped
            if self.dist.is_main:
                print(f"step {self.step}: skipped {skipped} unreadable images (named above)", file=sys.stderr)
        self.skipped = 0
        self.eval_rows.append(row)
        state = self.state()
        if self.dist.is_main:
            if is_best:  # first, so that a last checkpoint never claims a best no file holds
                self._save(state, "checkpoint-best.pth")
            self._save(state, "checkpoint-last.pth")
            self.evals.log(row)
            if self.logger is not None and self.logger.tb is not None:  # evaluations in TensorBoard too
                for k, v in metrics.items():
                    if isinstance(v, (int, float)):
                        self.logger.tb.add_scalar(f"eval/{k}", v, self.step)
        self.saved_step = self.step
        return row

    def stop_checkpoint(self) -> None:
        """``checkpoint-last.pth`` at this step without an evaluation (a stop by signal)."""
        self.check_weights()
        state = self.state()
        if self.dist.is_main:
            self._save(state, "checkpoint-last.pth")
        self.saved_step = self.step

    def resume(self) -> bool:
        """Load the checkpoint ``--resume`` names (``'auto'``: the newest loadable one); False when there is none.

        Raises:
            ValueError: the checkpoint belongs to another recipe, was trained with another effective batch, or
                with other run-defining arguments (unless ``--force-resume``).
        """
        path, ckpt = find_resume(self.out, self.args.resume)
        if ckpt is None:
            return False
        if ckpt.get("recipe", self.name) != self.name:
            raise ValueError(
                f"{path} is a {ckpt['recipe']} checkpoint, this is {self.name}: start from it with --checkpoint "
                "(a new run), resume only a run of the same recipe"
            )
        if ckpt.get("effective_batch") != self.effective_batch:
            raise ValueError(
                f"{path} was trained with effective batch {ckpt.get('effective_batch')}, this run has "
                f"{self.effective_batch} (batch x accum x ranks); keep it equal to resume exactly"
            )
        self.check_resume(ckpt, path)
        if changed := changed_args(ckpt.get("args", {}), self.args):
            message = f"{path} was written by a run with other arguments: {', '.join(changed)}"
            if not getattr(self.args, "force_resume", False):
                raise ValueError(
                    f"{message}. Resume with the same arguments, or pass --force-resume to continue anyway"
                )
            if self.dist.is_main:
                print(f"warning: {message}; continuing (--force-resume)", file=sys.stderr)
        self.load_state_dicts(ckpt, str(path))
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best = int(ckpt["step"]), ckpt.get("best")
        self.eval_rows, self.last_row = list(ckpt.get("eval_rows", [])), dict(ckpt.get("last_row", {}))
        self.log_sum, self.log_count = float(ckpt.get("log_sum", 0.0)), int(ckpt.get("log_count", 0))
        self.nonfinite_in_row, self.nonfinite_since_log = (int(n) for n in ckpt.get("nonfinite", (0, 0)))
        self.saved_step = self.step
        rng = ckpt["rng"]
        set_rng_state(rng["per_rank"][self.dist.rank] if "per_rank" in rng else rng)
        return True

    # ----------------------------------------------------------------------------- the loop
    def _flush(self) -> None:
        """Move the on-device loss sum into the (checkpointed) log accumulator; same steps on every rank."""
        if self.acc_count:
            self.log_sum += float(all_reduce_mean(self.acc))
            self.log_count += self.acc_count
            self.acc.zero_()
            self.acc_count = 0

    def result(self, wall: float = 0.0, images: int = 0) -> dict[str, Any]:
        """The run's summary: last metrics and evaluation, step, best score, wall time, mean images/s, parameters."""
        last_eval = self.eval_rows[-1] if self.eval_rows else {}
        best = self.best if self.best is not None else (-math.inf if self.higher_is_better else math.inf)
        return {
            **self.last_row,
            **{k: v for k, v in last_eval.items() if k not in ("step", "epoch")},
            "step": self.step,
            f"best_{self.score}": best,
            "total_steps": self.total_steps,
            "wall_s": wall,
            "mean_images_per_s": images / max(wall, 1e-9),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def _claim_output(self) -> None:
        """A new run into a folder that holds another run's checkpoints: refuse, or with ``--overwrite`` clear them."""
        earlier = [p for name in ("checkpoint-*.pth", "*.jsonl", "reconstruction_*.png") for p in self.out.glob(name)]
        if not any(p.name in CHECKPOINT_NAMES for p in earlier):
            return
        if not getattr(self.args, "overwrite", False):
            raise FileExistsError(
                f"{self.out} holds the checkpoints of an earlier run; pass --resume auto to continue it, --overwrite "
                "to replace it, or choose another --output"
            )
        if self.dist.is_main:
            for path in earlier:
                path.unlink(missing_ok=True)

    def run(self) -> dict[str, Any]:
        """Resume or claim the output folder, train to ``total_steps`` with checkpoints, and return ``result()``.

        A finished run reports its result and does nothing.

        Raises:
            FolderInUseError: another run holds the output folder.
            ValueError: an earlier run's checkpoints are there (without ``--resume`` / ``--overwrite``), or a refused
                resume (see ``resume``).
        """
        args, main = self.args, self.dist.is_main
        resumed = self.resume()
        if not resumed:
            self._claim_output()
        if self.step >= self.total_steps:
            if main:
                print(f"{self.out}: this run already finished at step {self.step}; nothing to do", file=sys.stderr)
            return self.result()
        if args.stop_after and args.stop_after <= self.step:
            raise ValueError(
                f"--stop-after {args.stop_after} is not beyond the checkpoint's step {self.step}: nothing to do; "
                f"give a step after {self.step} (the run has {self.total_steps}), or drop --stop-after to finish it"
            )
        try:
            if main:
                tensorboard = not getattr(args, "no_tensorboard", False)
                self.logger = MetricsLogger(self.out, self.step if resumed else None, tensorboard=tensorboard)
                self.evals = MetricsLogger(self.out, tensorboard=False, name="eval.jsonl", rows=self.eval_rows)
                write_json({**run_args(args), **self.summary(), "resumed_from_step": self.step}, self.out / "args.json")
                print(self.describe(), file=sys.stderr)
            return self._loop()
        finally:
            for lg in (self.logger, self.evals):
                if lg:
                    lg.close()

    def _stop_by_signal(self) -> None:
        if self.saved_step != self.step:
            self._flush()
            self.stop_checkpoint()
        name = signal.Signals(self.stop_signum).name
        message = ""
        if self.dist.is_main:
            message = (
                f"stopped by {name} at step {self.step}: {self.out / 'checkpoint-last.pth'} holds it; resume with: "
                f"{resume_command(self.dist.world_size)}"
            )
        raise StoppedBySignal(self.stop_signum, message)

    def _loop(self) -> dict[str, Any]:
        with self.stop:
            return self._steps()

    def _steps(self) -> dict[str, Any]:
        args, spe = self.args, self.steps_per_epoch
        stop = min(self.total_steps, args.stop_after) if args.stop_after else self.total_steps
        bar = Progress(stop, self.step, enabled=self.dist.is_main, desc=self.name, bar=not args.no_progress)
        short_every = max(1, self.total_steps // 10) if self.total_steps < spe else 0
        t_start = t_log = time.perf_counter()
        images_since = images_total = 0
        # float64, so that the logged mean does not depend on where a run was split
        self.acc, self.acc_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        while self.step < stop:
            epoch, in_epoch = divmod(self.step, spe)
            self.sampler.set_epoch(epoch, start_batch=in_epoch * args.accum_iter)
            batches = iter(self.loader)
            for _ in range(in_epoch, spe):
                micro = [next(batches) for _ in range(args.accum_iter)]
                self.skipped += sum(int(b["skipped"].sum()) for b in micro)
                loss = self.train_step(micro)
                if loss is not None:
                    self.acc += loss
                    self.acc_count += 1
                self.step += 1
                images_since += self.effective_batch
                bar.update()
                # rows at fixed steps (not at --stop-after), so a stopped-and-resumed run logs the same curve
                if self.step % args.log_every == 0 or self.step == self.total_steps:
                    self._flush()
                    now = time.perf_counter()
                    self.last_row = {
                        "step": self.step,
                        "epoch": self.step / spe,
                        "loss": self.log_sum / self.log_count if self.log_count else None,
                        "lr": max(g["lr"] for g in self.optimizer.param_groups),
                        "images_per_s": images_since / max(now - t_log, 1e-9),
                    }
                    if self.nonfinite_since_log:
                        self.last_row["nonfinite_steps_skipped"] = self.nonfinite_since_log
                    images_total, images_since, t_log = images_total + images_since, 0, now
                    self.log_sum, self.log_count, self.nonfinite_since_log = 0.0, 0, 0
                    if self.logger:
                        self.logger.log(self.last_row)
                    bar.set(self.step, stop, loss=self.last_row["loss"], lr=self.last_row["lr"])
                self.on_step()
                # milestones: epoch ends, the run's end, and for a run shorter than an epoch every tenth of it
                milestone = self.step % spe == 0 or self.step == self.total_steps
                milestone = milestone or bool(short_every and self.step % short_every == 0)
                if milestone or self.step == stop or (args.save_every and self.step % args.save_every == 0):
                    self._flush()
                    self.checkpoint(milestone)
                if self.stop_signum:
                    self._stop_by_signal()
                if self.step >= stop:
                    break
        bar.close()
        barrier()
        return self.result(time.perf_counter() - t_start, images_total + images_since)
