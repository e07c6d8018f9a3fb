"""What the training recipes share: an output folder that belongs to one run, and the training loop.

``RunFolder``: while a run holds its output folder (an ``flock`` on ``.run.lock``, which the
kernel releases when the process dies, so a crashed run never leaves it stuck), a second run into
the same folder stops at once with a message naming the folder and the holder.

``TrainLoop``: one optimizer step per ``accum_iter`` micro-batches, metric rows at fixed steps,
evaluation and checkpoints at epoch ends (and every ``--save-every`` steps, and at the stop), exact
resume. At a checkpoint the files are written in the order best, last, evaluation row, and the
last checkpoint carries the evaluation rows, so after a kill at any moment: the last checkpoint
never claims a best that no file holds; ``--resume auto`` takes the newest loadable checkpoint
(best is newer when the run died between the two writes); ``eval.jsonl`` is rewritten from it.
Resuming with other run-defining arguments (data, seed, schedule, ...) is refused unless
``--force-resume``; resuming a finished run reports its result and does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from registry import UnsafeCheckpointError, apply_state_dict

from ..io import write_json
from .checkpoint import CHECKPOINT_NAMES, atomic_save, find_resume, get_rng_state, remove_stale_temps, set_rng_state
from .common import amp_context
from .distributed import DistInfo, all_reduce_mean, barrier
from .logger import MetricsLogger, Progress
from .schedule import set_lr, warmup_cosine

LOCK_NAME = ".run.lock"
# arguments that may change when a run resumes: where and how it runs, not what it computes
FREE_ARGS = frozenset(
    {"output", "resume", "force_resume", "overwrite", "device", "threads", "workers", "log_every", "save_every"}
    | {"stop_after", "no_progress", "no_tensorboard", "compile", "grad_checkpointing", "download", "data_root"}
    | {"on_bad_image", "grid_every"}
)


class FolderInUseError(RuntimeError):
    """Another run holds the output folder."""


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
            raise FolderInUseError(error)
        return self.path

    def _acquire(self) -> str | None:
        try:
            import fcntl
        except ImportError:  # not POSIX
            warnings.warn(f"cannot lock {self.path} on this platform: do not start two runs into it", stacklevel=3)
            return None
        if self.path.exists() and not self.path.is_dir():
            return f"the output folder {self.path} is a file; give a folder (--output)"
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            return (
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


def run_main(main: Callable[[], Any]) -> None:
    """A recipe's ``__main__``: an error the user can act on (bad input, a file, a folder in use, a
    refused resume) ends the program with ``error: MESSAGE`` and exit status 1, not a traceback."""
    try:
        main()
    except (ValueError, OSError, FolderInUseError, UnsafeCheckpointError) as err:
        sys.exit(f"error: {err}")


def run_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of a run as plain values (what a checkpoint records)."""
    return {k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str, bool))}


def changed_args(recorded: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Run-defining arguments that differ from a checkpoint's, as ``--name now (checkpoint: then)``."""
    now = run_args(args)
    keys = sorted(k for k in set(now) & set(recorded) if k not in FREE_ARGS and now[k] != recorded[k])
    return [f"--{k.replace('_', '-')} {now[k]!r} (checkpoint: {recorded[k]!r})" for k in keys]


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

    def __init__(self, args: argparse.Namespace, dist: DistInfo) -> None:
        self.args, self.dist, self.device, self.out = args, dist, dist.device, Path(args.output)
        self.step, self.best = 0, None
        self.eval_rows: list[dict[str, Any]] = []
        self.last_row: dict[str, Any] = {}
        self.log_sum, self.log_count, self.skipped = 0.0, 0, 0
        self.logger: MetricsLogger | None = None
        self.evals: MetricsLogger | None = None

    # ----------------------------------------------------------------------------- what a subclass provides
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss of one micro-batch (called under autocast)."""
        raise NotImplementedError

    def evaluate(self, epoch_end: bool) -> dict[str, float]:
        """Metrics at a checkpoint (every rank calls it); must include ``self.score``."""
        raise NotImplementedError

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Under DDP, reduce gradients on the last micro-batch only."""
        if self.dist.distributed and not last:
            return getattr(self.train_model, "_orig_mod", self.train_model).no_sync()  # through torch.compile
        return contextlib.nullcontext()

    def train_step(self, batches: list[dict[str, Any]]) -> torch.Tensor:
        """One optimizer step over the micro-batches: warmup + cosine lr, scaled backward passes,
        ``--clip-grad``, the scaler's step. Returns the mean loss, on the device."""
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.base_lr, self.args.min_lr)
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            with self.gradient_sync(i == len(batches) - 1):
                with amp_context(self.device, self.precision):
                    loss = self.loss(batch)
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach()
        if self.args.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(batches)

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
            "rng": rng,
            "args": run_args(self.args),
            "recipe": self.name,
            **self.record(),
        }

    def _save(self, state: dict[str, Any], name: str) -> None:
        remove_stale_temps(self.out / name)  # the folder is this run's alone
        atomic_save(state, self.out / name)

    def checkpoint(self, epoch_end: bool) -> dict[str, Any]:
        """Evaluate, then write ``checkpoint-best.pth`` (when the score improved) before ``checkpoint-last.pth``
        and the evaluation row, each atomically; returns the evaluation row.
        """
        metrics = self.evaluate(epoch_end)
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
        return row

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

    def _loop(self) -> dict[str, Any]:
        args, spe = self.args, self.steps_per_epoch
        stop = min(self.total_steps, args.stop_after) if args.stop_after else self.total_steps
        bar = Progress(stop, self.step, enabled=self.dist.is_main and not args.no_progress, desc=self.name)
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
                self.acc += self.train_step(micro)
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
                        "loss": self.log_sum / self.log_count,
                        "lr": max(g["lr"] for g in self.optimizer.param_groups),
                        "images_per_s": images_since / max(now - t_log, 1e-9),
                    }
                    images_total, images_since, t_log = images_total + images_since, 0, now
                    self.log_sum, self.log_count = 0.0, 0
                    if self.logger:
                        self.logger.log(self.last_row)
                    bar.set(self.step, stop, loss=self.last_row["loss"], lr=self.last_row["lr"])
                self.on_step()
                epoch_end = self.step % spe == 0
                if epoch_end or self.step == stop or (args.save_every and self.step % args.save_every == 0):
                    self._flush()
                    self.checkpoint(epoch_end)
                if self.step >= stop:
                    break
        bar.close()
        barrier()
        return self.result(time.perf_counter() - t_start, images_total + images_since)
