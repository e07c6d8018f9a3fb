"""MAE pretraining loop behind ``recipes/pretrain.py``.

One process (CPU or GPU) or ``torchrun`` on many GPUs/nodes with DistributedDataParallel. Recipe of
facebookresearch/mae: AdamW(0.9, 0.95), ``lr = blr * effective_batch / 256``, per-step linear
warmup then cosine, no weight decay on norms, biases, tokens and position tables,
RandomResizedCrop(0.2-1) + flip. Resume is exact: model, optimizer, grad scaler, RNG and the data
position are restored, and samples / masks are seeded per sample (see ``whitebox.train.data``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from registry import create_model

from .checkpoint import (
    atomic_save,
    get_rng_state,
    load_checkpoint_file,
    remove_stale_temps,
    seed_everything,
    set_rng_state,
)
from .common import (
    add_model_shape_args,
    amp_context,
    check_model_name,
    count_params,
    model_kwargs_from_args,
    output_dir,
    resolve_precision,
    write_json,
)
from .data import MAEAugment, ResumableBatchSampler, SeededDataset, build_dataset, fixed_batch, make_loader
from .distributed import DistInfo, all_reduce_mean, barrier, cleanup_distributed, init_distributed
from .logger import MetricsLogger, Progress
from .optim import param_groups_weight_decay
from .schedule import scaled_lr, set_lr, warmup_cosine
from .visualize import reconstruction_grid, save_png

# What ``python recipes/pretrain.py`` with no data argument trains: a small CRATE-MAE on the bundled
# photos, about a minute on two CPU cores. Flags given on the command line win.
DEMO_DEFAULTS = dict(
    img_size=32,
    patch_size=4,
    embed_dim=96,
    depth=4,
    num_heads=4,
    epochs=8,
    batch_size=32,
    warmup_epochs=1,
    samples_per_epoch=768,
    blr=4.0e-3,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="MAE pretraining for any registered masked autoencoder (CRATE-MAE, ViT-MAE). With no --data "
        "it trains a small demo CRATE-MAE on photos bundled with scikit-image: " + str(DEMO_DEFAULTS),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="crate_mae_tiny", help="registered MAE model name")
    add_model_shape_args(p)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--norm-pix-loss", action="store_true", help="regress per-patch normalised pixels")
    d = p.add_argument_group("data")
    d.add_argument(
        "--data", default=None, help="image folder, .npz (arrays or JPEG pack), 'cifar10'; unset: bundled photos"
    )
    d.add_argument("--split", default="train")
    d.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root")
    d.add_argument("--data-root", default="data", help="where --data cifar10 lives")
    d.add_argument("--samples-per-epoch", type=int, default=None, help="epoch length for the bundled photos")
    d.add_argument("--workers", type=int, default=None, help="loader processes per rank (default: 0 on CPU, 8 on GPU)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None, help="(default 400)")
    o.add_argument("--steps", type=int, default=None, help="optimizer steps in all (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=None, help="per rank and micro-step (default 64)")
    o.add_argument("--accum-iter", type=int, default=1, help="gradient accumulation steps")
    o.add_argument("--blr", type=float, default=None, help="base lr; lr = blr * effective batch / 256 (default 1.5e-4)")
    o.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    o.add_argument("--min-lr", type=float, default=0.0)
    o.add_argument("--warmup-epochs", type=float, default=None, help="(default 40)")
    o.add_argument("--warmup-steps", type=int, default=None, help="overrides --warmup-epochs")
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--clip-grad", type=float, default=None, help="max global grad norm")
    r = p.add_argument_group("run")
    r.add_argument("--output", default="output/pretrain")
    r.add_argument("--resume", default=None, help="checkpoint path, or 'auto' (OUTPUT/checkpoint-last.pth if present)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument(
        "--threads", type=int, default=None, help="CPU threads per process (on a busy CPU, 1 avoids OpenMP spin-waits)"
    )
    r.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--grad-checkpointing", action="store_true")
    r.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2)")
    r.add_argument("--log-every", type=int, default=10, help="steps per metrics row")
    r.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0: at epoch ends)")
    r.add_argument("--grid-every", type=int, default=0, help="also write a reconstruction grid every N steps")
    r.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after this many steps in all")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-tensorboard", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.demo = args.data is None
    fallback = dict(epochs=400, batch_size=64, warmup_epochs=40.0, samples_per_epoch=1024, blr=1.5e-4)
    demo = dict(DEMO_DEFAULTS)
    if args.model != build_parser().get_default("model"):  # a named variant keeps its own architecture
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            demo.pop(key)
    for key, value in (demo if args.demo else fallback).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in fallback.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "batch_size", "accum_iter", "log_every", "steps"):
        if getattr(args, key) is not None and getattr(args, key) <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    return args


class Trainer:
    """State and steps of one pretraining run (see ``run``)."""

    def __init__(self, args: argparse.Namespace, dist_info: DistInfo) -> None:
        self.args, self.dist = args, dist_info
        self.device = dist_info.device
        self.precision = resolve_precision(args.precision, self.device)
        seed_everything(args.seed + dist_info.rank)
        if self.device.type == "cuda":  # TF32 matmuls for any fp32 work, tuned convolutions
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        check_model_name(args.model)
        self.model_kwargs = model_kwargs_from_args(args)
        self.model_kwargs.update(mask_ratio=args.mask_ratio, norm_pix_loss=args.norm_pix_loss)
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        not_mae = f"{args.model} is not a masked autoencoder; pretrain.py trains *_mae_* models"
        try:
            model = create_model(args.model, **self.model_kwargs)
        except TypeError as err:  # a supervised model refuses the MAE arguments
            if "mask_ratio" in str(err):
                raise ValueError(not_mae) from err
            raise
        if not hasattr(model, "reconstruct") or not hasattr(model, "patchify"):
            raise ValueError(not_mae)
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model.to(self.device)
        self.num_patches = model.encoder.patch_embed.num_patches
        self.img_size = model.encoder.patch_embed.img_size[0]

        # data
        base = build_dataset(args.data, args.split, args.download, args.data_root, args.samples_per_epoch)
        self.dataset = SeededDataset(base, MAEAugment(self.img_size), num_patches=self.num_patches)
        self.sampler = ResumableBatchSampler(
            len(base), args.batch_size, dist_info.rank, dist_info.world_size, seed=args.seed, shuffle=True
        )
        workers = args.workers if args.workers is not None else (0 if self.device.type == "cpu" else 8)
        self.loader = make_loader(self.dataset, self.sampler, workers, pin_memory=self.device.type == "cuda")
        self.probe_imgs, self.probe_noise = fixed_batch(base, 32, self.img_size, self.num_patches, args.seed)

        # schedule
        self.effective_batch = args.batch_size * args.accum_iter * dist_info.world_size
        self.steps_per_epoch = len(base) // (args.batch_size * dist_info.world_size) // args.accum_iter
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(base)} samples make no full optimizer step of {self.effective_batch}; "
                "lower --batch-size or --accum-iter"
            )
        self.total_steps = args.steps if args.steps is not None else self.steps_per_epoch * args.epochs
        self.warmup_steps = (
            args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * self.steps_per_epoch)
        )
        if self.warmup_steps >= self.total_steps:
            warnings.warn(
                f"warmup ({self.warmup_steps} steps) >= the run ({self.total_steps} steps): the lr never reaches "
                "its peak; set --warmup-steps or --warmup-epochs",
                stacklevel=2,
            )
        self.base_lr = args.lr if args.lr is not None else scaled_lr(args.blr, self.effective_batch)

        train_model: nn.Module = self.model
        if args.fsdp:
            self._shard()  # in place: parameters become sharded DTensors with the same names
        elif dist_info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # parameter groups by name (fully_shard keeps names), so no_weight_decay() applies
        groups = param_groups_weight_decay(self.model, args.weight_decay)
        fused = self.device.type == "cuda" and not args.fsdp
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=(0.9, 0.95), fused=fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if args.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model

        self.step = 0
        self.best_loss = math.inf
        self.log_sum, self.log_count = 0.0, 0

    def _shard(self) -> None:
        """FSDP2: shard every encoder and decoder block, then the rest; bf16 compute when asked."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # MAEOutput.pred is a slice; nothing here modifies the outputs in place, which is what this warns about
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        if self.precision == "fp16":
            raise ValueError("--fsdp supports --precision bf16 or fp32")
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if self.precision == "bf16" else None, reduce_dtype=torch.float32
        )
        for block in [*self.model.encoder.blocks, *self.model.decoder_blocks]:
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)

    # ----------------------------------------------------------------------------- checkpoints
    def _state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Full (unsharded) model and optimizer state; a collective under FSDP (every rank calls it)."""
        if not self.args.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def state(self) -> dict[str, Any]:
        model_state, optim_state = self._state_dicts()
        return {
            "model": model_state,
            "optimizer": optim_state,
            "fsdp": bool(self.args.fsdp),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "effective_batch": self.effective_batch,
            "best_loss": self.best_loss,
            "log_sum": self.log_sum,
            "log_count": self.log_count,
            "rng": get_rng_state(),
            "model_name": self.args.model,
            "model_kwargs": self.model_kwargs,
            "args": {k: v for k, v in vars(self.args).items() if isinstance(v, (int, float, str, bool, type(None)))},
        }

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        if self.dist.is_main:
            path = Path(self.args.output) / name
            remove_stale_temps(path)  # rank 0 is the only writer
            atomic_save(state or self.state(), path)

    def load(self, path: str | Path) -> None:
        ckpt = load_checkpoint_file(path)
        if ckpt.get("model_name") != self.args.model:
            raise ValueError(f"{path} was trained as {ckpt.get('model_name')!r}, not --model {self.args.model!r}")
        if ckpt["effective_batch"] != self.effective_batch:
            raise ValueError(
                f"{path} was trained with effective batch {ckpt['effective_batch']}, this run has "
                f"{self.effective_batch} (batch x accum x ranks); keep it equal to resume exactly"
            )
        if bool(ckpt.get("fsdp", False)) != bool(self.args.fsdp):
            raise ValueError(
                f"{path} was written {'with' if ckpt.get('fsdp') else 'without'} --fsdp; resume the same way"
            )
        if self.args.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(
                self.model,
                self.optimizer,
                model_state_dict=ckpt["model"],
                optim_state_dict=ckpt["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_loss = int(ckpt["step"]), float(ckpt["best_loss"])
        self.log_sum, self.log_count = float(ckpt["log_sum"]), int(ckpt["log_count"])
        set_rng_state(ckpt["rng"])

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def probe(self, write_grid: bool) -> float:
        """Loss on a fixed batch with fixed masks (comparable across steps); optionally the grid PNG."""
        model = self.model
        was_training = model.training
        model.eval()
        imgs, noise = self.probe_imgs.to(self.device), self.probe_noise.to(self.device)
        with amp_context(self.device, self.precision):
            loss = float(model(imgs, noise=noise).loss)
        if write_grid:
            rec = model.reconstruct(imgs[:8], noise=noise[:8])  # on every rank: a collective under FSDP
        if write_grid and self.dist.is_main:
            grid = reconstruction_grid(rec.masked, rec.pasted, imgs[:8], scale=max(1, 128 // self.img_size))
            save_png(grid, Path(self.args.output) / f"reconstruction_step{self.step:07d}.png")
            save_png(grid, Path(self.args.output) / "reconstruction_latest.png")
        model.train(was_training)
        return loss

    def checkpoint(self, epoch_end: bool) -> float:
        probe_loss = self.probe(write_grid=epoch_end)
        is_best = probe_loss < self.best_loss
        self.best_loss = min(self.best_loss, probe_loss)
        state = self.state()
        self.save("checkpoint-last.pth", state)
        if is_best:
            self.save("checkpoint-best.pth", state)
        return probe_loss

    # ----------------------------------------------------------------------------- training
    def train_step(self, batches: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """One optimizer step over ``accum_iter`` micro-batches; returns the mean loss (on device)."""
        args = self.args
        set_lr(self.optimizer, warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.base_lr, args.min_lr))
        total = torch.zeros((), device=self.device)
        for i, (imgs, noise, _) in enumerate(batches):
            imgs = imgs.to(self.device, non_blocking=True)
            noise = noise.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext()
            if self.args.fsdp:
                self.model.set_requires_gradient_sync(last)  # reduce-scatter only on the last micro-batch
            elif self.dist.distributed and not last:
                sync = _unwrap_ddp(self.train_model).no_sync()
            with sync:
                with amp_context(self.device, self.precision):
                    loss = self.train_model(imgs, mask_ratio=args.mask_ratio, noise=noise).loss
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach()
        if args.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / len(batches)

    def _flush(self) -> None:
        """Move the on-device loss sum into the (checkpointed) log accumulator; same steps on every rank."""
        if self.acc_count:
            self.log_sum += float(all_reduce_mean(self.acc))
            self.log_count += self.acc_count
            self.acc.zero_()
            self.acc_count = 0

    def run(self) -> dict[str, Any]:
        args, out = self.args, Path(self.args.output)
        resume = args.resume
        if resume == "auto":
            resume = str(out / "checkpoint-last.pth") if (out / "checkpoint-last.pth").is_file() else None
        if resume:
            self.load(resume)
        logger = evals = None
        if self.dist.is_main:
            start = self.step if resume else None
            logger = MetricsLogger(out, start, tensorboard=not args.no_tensorboard)
            evals = MetricsLogger(out, start, tensorboard=False, name="eval.jsonl")
            write_json(self.summary(resume), out / "args.json")
            print(self.describe(), file=sys.stderr)
        stop = min(self.total_steps, args.stop_after) if args.stop_after else self.total_steps
        bar = Progress(stop, self.step, enabled=self.dist.is_main and not args.no_progress, desc="pretrain")
        t_start = t_log = time.perf_counter()
        images_since, images_total, last = 0, 0, {}
        # float64 so that the logged mean does not depend on where a run was split
        self.acc, self.acc_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        while self.step < stop:
            epoch = self.step // self.steps_per_epoch
            in_epoch = self.step - epoch * self.steps_per_epoch
            self.sampler.set_epoch(epoch, start_batch=in_epoch * args.accum_iter)
            batches = iter(self.loader)
            for _ in range(in_epoch, self.steps_per_epoch):
                self.acc += self.train_step([next(batches) for _ in range(args.accum_iter)])
                self.acc_count += 1
                images_since += self.effective_batch
                bar.update()
                # rows at fixed steps (not at --stop-after), so a stopped-and-resumed run logs the same curve
                if self.step % args.log_every == 0 or self.step == self.total_steps:
                    self._flush()
                    now = time.perf_counter()
                    last = {
                        "step": self.step,
                        "epoch": self.step / self.steps_per_epoch,
                        "loss": self.log_sum / self.log_count,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": images_since / max(now - t_log, 1e-9),
                    }
                    images_total += images_since
                    images_since, t_log = 0, now
                    self.log_sum, self.log_count = 0.0, 0
                    if logger:
                        logger.log(last)
                    bar.set(self.step, stop, loss=last["loss"], lr=last["lr"], img_s=round(last["images_per_s"]))
                epoch_end = self.step % self.steps_per_epoch == 0
                if args.grid_every and self.step % args.grid_every == 0 and not epoch_end:
                    self.probe(write_grid=True)
                if epoch_end or self.step == stop or (args.save_every and self.step % args.save_every == 0):
                    self._flush()
                    probe_loss = self.checkpoint(epoch_end)
                    if evals:
                        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "probe_loss": probe_loss}
                        evals.log(row)
                if self.step >= stop:
                    break
        bar.close()
        barrier()
        for lg in (logger, evals):
            if lg:
                lg.close()
        wall = time.perf_counter() - t_start
        return {
            **last,
            "best_probe_loss": self.best_loss,
            "wall_s": wall,
            "mean_images_per_s": images_total / max(wall, 1e-9),
            "params": count_params(self.model),
        }

    def summary(self, resume: str | None) -> dict[str, Any]:
        return {
            **vars(self.args),
            "resume": resume,
            "model_kwargs": self.model_kwargs,
            "params": count_params(self.model),
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "precision": self.precision,
            "effective_batch": self.effective_batch,
            "lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "torch": torch.__version__,
        }

    def describe(self) -> str:
        data = self.args.data or "bundled sample photos (demo run; pass --data for real training)"
        return (
            f"{self.args.model} {self.model_kwargs} | {count_params(self.model) / 1e6:.2f}M params | data: {data} "
            f"({len(self.dataset)} images) | {self.dist.world_size} x {self.device} {self.precision} | "
            f"batch {self.effective_batch}, lr {self.base_lr:.3g}, {self.total_steps} steps "
            f"({self.steps_per_epoch}/epoch, warmup {self.warmup_steps}) -> {self.args.output}"
        )


def _unwrap_ddp(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    try:
        if info.is_main:
            output_dir(args.output)
        barrier()
        result = Trainer(args, info).run()
    finally:
        cleanup_distributed()
    if info.is_main:
        print(
            f"done: step {result.get('step')} loss {result.get('loss', float('nan')):.4f} "
            f"best probe loss {result['best_probe_loss']:.4f} | {result['mean_images_per_s']:.1f} images/s | "
            f"{result['wall_s']:.1f} s",
            file=sys.stderr,
        )
    return result
