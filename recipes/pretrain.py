"""MAE pretraining for CRATE-MAE / ViT-MAE: one process, or ``torchrun`` on many GPUs and nodes.

    python recipes/pretrain.py                      # demo: small CRATE-MAE on bundled photos, CPU, ~1 min
    python recipes/pretrain.py --model crate_mae_base --data /path/to/imagenet --epochs 400
    torchrun --nproc_per_node 8 recipes/pretrain.py --model crate_mae_base --data /path/to/imagenet

The recipe of facebookresearch/mae: AdamW(0.9, 0.95), ``lr = blr * effective_batch / 256``, per-step
linear warmup then cosine, no weight decay on norms, biases, tokens and position tables,
RandomResizedCrop(0.2-1) + flip; DistributedDataParallel, or FSDP2 with ``--fsdp``. The loop,
checkpoints, exact resume and the output folder's lock are ``whitebox.train.TrainLoop``'s; samples
and masks are seeded per sample (``whitebox.train.data``), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any

try:
    import whitebox
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import whitebox

from whitebox.cli import start_program
from whitebox.recipe_args import PRETRAIN_DEFAULTS, PRETRAIN_DEMO, pretrain_parser

if __name__ == "__main__":
    start_program(pretrain_parser)  # --help answers here, before torch is imported

import torch
from torch import nn

from whitebox.analysis import reconstruction_grid
from whitebox.cli import require
from whitebox.data import SplitNotFoundError, data_options, fixed_batch, seeded_dataset
from whitebox.train import (
    MAEAugment,
    ResumableBatchSampler,
    RunFolder,
    TrainLoop,
    build_dataset,
    cleanup_distributed,
    init_distributed,
    make_loader,
    param_groups_weight_decay,
    scaled_lr,
)
from whitebox.train.checkpoint import seed_everything
from whitebox.train.common import (
    amp_context,
    check_model_name,
    count_params,
    model_kwargs_from_args,
    resolve_precision,
)
from whitebox.train.run import finish_line, run_main

# the demo's values (no --data) and every other run's defaults: defined with the flags, in whitebox.recipe_args
DEMO_DEFAULTS, DEFAULTS = PRETRAIN_DEMO, PRETRAIN_DEFAULTS
build_parser = pretrain_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with the defaults filled in (the demo's where no --data is given) and their relations
    checked; the warmup is filled in by ``MAEPretraining``, which knows the run's length."""
    args = build_parser().parse_args(argv)
    args.demo = args.data is None
    demo = dict(DEMO_DEFAULTS)
    if args.model != build_parser().get_default("model"):  # a named variant keeps its own architecture
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            demo.pop(key)
    for defaults in (demo, DEFAULTS) if args.demo else (DEFAULTS,):
        for key, value in defaults.items():
            if getattr(args, key) is None and key != "warmup_epochs":
                setattr(args, key, value)
    check_run_length(args)
    require(
        args.best_by != "knn" or args.knn_data is not None,
        "--best-by knn needs --knn-data (labelled images for the kNN monitor); give it, or --best-by probe_loss",
    )
    return args


def default_warmup(args: argparse.Namespace) -> tuple[float, float]:
    """The default warmup in epochs, and as a fraction of the run (the default schedule's shape)."""
    defaults = {**DEFAULTS, **(DEMO_DEFAULTS if args.demo else {})}
    return defaults["warmup_epochs"], defaults["warmup_epochs"] / defaults["epochs"]


def check_run_length(args: argparse.Namespace) -> None:
    """Relations between the flags that need no data: the warmup within the run, --min-lr under the lr."""
    if args.steps is not None and args.warmup_steps is not None:
        require(
            args.warmup_steps < args.steps,
            f"--warmup-steps {args.warmup_steps} is not shorter than the run (--steps {args.steps}); "
            "give fewer warmup steps, or leave it unset (a tenth of the run)",
        )
    if args.steps is None and args.warmup_steps is None and args.warmup_epochs is not None:
        require(
            args.warmup_epochs < args.epochs,
            f"--warmup-epochs {args.warmup_epochs:g} is not shorter than the run (--epochs {args.epochs}); "
            "give fewer warmup epochs, or leave it unset",
        )
    if args.lr is not None:
        require(args.min_lr <= args.lr, f"--min-lr {args.min_lr:g} is above the peak --lr {args.lr:g}")


class MAEPretraining(TrainLoop):
    """A masked autoencoder, its data and optimizer; a step is MAE's loss on seeded masks, the evaluation
    the loss on a fixed probe batch with fixed masks (which picks the best checkpoint)."""

    name, score, higher_is_better = "pretrain", "probe_loss", False

    def __init__(self, args: argparse.Namespace, dist: Any) -> None:
        super().__init__(args, dist)
        self.precision = resolve_precision(args.precision, self.device)
        self.effective_batch = args.batch_size * args.accum_iter * dist.world_size
        self.base_lr = args.lr if args.lr is not None else scaled_lr(args.blr, self.effective_batch)
        require(
            args.min_lr <= self.base_lr,
            f"--min-lr {args.min_lr:g} is above the peak lr {self.base_lr:.3g} "
            + ("(--lr)" if args.lr is not None else f"(--blr {args.blr:g} x global batch {self.effective_batch} / 256)")
            + "; lower --min-lr or raise the lr",
        )
        seed_everything(args.seed + dist.rank)
        if self.device.type == "cuda":  # TF32 matmuls for any fp32 work, tuned convolutions
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        check_model_name(args.model)
        self.model_kwargs = {
            **model_kwargs_from_args(args),
            "mask_ratio": args.mask_ratio,
            "norm_pix_loss": args.norm_pix_loss,
        }
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        not_mae = f"{args.model} is not a masked autoencoder; pretrain.py trains *_mae_* models"
        try:
            model = whitebox.create_model(args.model, **self.model_kwargs)
        except TypeError as err:  # a supervised model refuses the MAE arguments
            if "mask_ratio" in str(err):
                raise ValueError(not_mae) from err
            raise
        if not isinstance(model, whitebox.models.MaskedAutoencoder):
            raise ValueError(not_mae)
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model.to(self.device)
        patch_embed = model.encoder.patch_embed
        self.img_size, self.num_patches = patch_embed.img_size[0], patch_embed.num_patches

        base = build_dataset(
            args.data, args.split, args.download, args.data_root, args.samples_per_epoch, **data_options(args)
        )
        self.dataset = seeded_dataset(base, MAEAugment(self.img_size), self.num_patches, args.on_bad_image)
        self.skipped_files = getattr(base, "skipped_files", [])  # files of the folder not used, with why
        self.sampler = ResumableBatchSampler(len(base), args.batch_size, dist.rank, dist.world_size, seed=args.seed)
        workers = args.workers if args.workers is not None else (0 if self.device.type == "cpu" else 8)
        self.loader = make_loader(self.dataset, self.sampler, workers, device=self.device)
        self.probe_imgs, self.probe_noise = fixed_batch(
            base, 32, self.img_size, self.num_patches, args.seed, args.on_bad_image
        )
        self.knn = KNNMonitor(self.model, args, self.device, self.precision) if args.knn_data else None
        if args.best_by == "knn":
            self.score, self.higher_is_better = "knn_top1", True

        self.steps_per_epoch = len(base) // (args.batch_size * dist.world_size) // args.accum_iter
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(base)} samples make no full optimizer step of {self.effective_batch}; "
                "lower --batch-size or --accum-iter"
            )
        self.total_steps = args.steps if args.steps is not None else self.steps_per_epoch * args.epochs
        self.warmup_steps = self.resolve_warmup()
        self.train_model: nn.Module = self.model
        if args.fsdp:
            self._shard()  # in place: parameters become sharded DTensors with the same names
        elif dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # parameter groups by name (fully_shard keeps names), so no_weight_decay() applies
        groups = param_groups_weight_decay(self.model, args.weight_decay)
        fused = self.device.type == "cuda" and not args.fsdp
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=(0.9, 0.95), fused=fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if args.compile:
            self.train_model = torch.compile(self.train_model)

    def resolve_warmup(self) -> int:
        """Warmup steps: --warmup-steps, else --warmup-epochs, else the default (40 epochs; the demo: 1), unless
        --steps is given or the default is not shorter than the run: then the default's share of the run (a
        tenth; the demo: an eighth), recorded as --warmup-steps in args.json and the checkpoints."""
        args, spe, total = self.args, self.steps_per_epoch, self.total_steps
        if args.warmup_steps is not None or args.warmup_epochs is not None:
            warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * spe)
            flag = (
                f"--warmup-steps {warmup}"
                if args.warmup_steps is not None
                else f"--warmup-epochs {args.warmup_epochs:g}"
            )
            require(
                warmup < total,
                f"{flag} ({warmup} steps) is not shorter than the run ({total} steps); give a shorter warmup, or "
                "leave it unset (a tenth of the run)",
            )
            return warmup
        epochs, share = default_warmup(args)
        args.warmup_epochs = epochs  # as recorded before runs of a set length derived it
        warmup = round(epochs * spe)
        if args.steps is not None or warmup >= total:
            args.warmup_steps = warmup = round(share * total)
        return warmup

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
    def state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Full (unsharded) model and optimizer state; a collective under FSDP (every rank calls it)."""
        if not self.args.fsdp:
            return super().state_dicts()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.model, self.optimizer, options=options)

    def load_state_dicts(self, ckpt: dict[str, Any], source: str = "") -> None:
        if not self.args.fsdp:
            return super().load_state_dicts(ckpt, source)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=ckpt["model"],
            optim_state_dict=ckpt["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )

    def record(self) -> dict[str, Any]:
        return {"model_name": self.args.model, "model_kwargs": self.model_kwargs, "fsdp": bool(self.args.fsdp)}

    def check_resume(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("model_name") != self.args.model:
            raise ValueError(f"{path} was trained as {ckpt.get('model_name')!r}, not --model {self.args.model!r}")
        if bool(ckpt.get("fsdp", False)) != bool(self.args.fsdp):
            raise ValueError(
                f"{path} was written {'with' if ckpt.get('fsdp') else 'without'} --fsdp; resume the same way"
            )

    # ----------------------------------------------------------------------------- step and evaluation
    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if self.args.fsdp:
            self.model.set_requires_gradient_sync(last)  # reduce-scatter only on the last micro-batch
            return contextlib.nullcontext()
        return super().gradient_sync(last)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        imgs = batch["image"].to(self.device, non_blocking=True)
        noise = batch["noise"].to(self.device, non_blocking=True)
        return self.train_model(imgs, mask_ratio=self.args.mask_ratio, noise=noise).loss

    @torch.no_grad()
    def evaluate(self, epoch_end: bool) -> dict[str, float]:
        """Loss on a fixed batch with fixed masks, comparable across steps; the grid at epoch ends."""
        was_training = self.model.training
        self.model.eval()
        imgs, noise = self.probe_imgs.to(self.device), self.probe_noise.to(self.device)
        with amp_context(self.device, self.precision):
            loss = float(self.model(imgs, noise=noise).loss)
        self.model.train(was_training)
        if epoch_end:
            self.write_grid()
        metrics = {"probe_loss": loss}
        if self.knn is not None:
            metrics.update(self.knn.evaluate())
        return metrics

    def write_grid(self) -> None:
        """Reconstructions of the probe batch (every rank runs the model: a collective under FSDP)."""
        path = self.out / f"reconstruction_step{self.step:07d}.png"
        grid = reconstruction_grid(
            self.model,
            self.probe_imgs[:8],
            noise=self.probe_noise[:8],
            scale=max(1, 128 // self.img_size),
            path=path if self.dist.is_main else None,
        )
        if self.dist.is_main:
            from whitebox.analysis import save_png

            save_png(grid, self.out / "reconstruction_latest.png")

    def on_step(self) -> None:
        every = self.args.grid_every
        if every and self.step % every == 0 and self.step % self.steps_per_epoch:
            self.write_grid()

    # ----------------------------------------------------------------------------- reporting
    def summary(self) -> dict[str, Any]:
        return {
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
            "skipped_files": [f"{path}: {why}" for path, why in self.skipped_files],
        }

    def describe(self) -> str:
        data = self.args.data or "bundled sample photos (demo run; pass --data for real training)"
        return (
            f"{self.args.model} {self.model_kwargs} | {count_params(self.model) / 1e6:.2f}M params | data: {data} "
            f"({len(self.dataset)} images) | {self.dist.world_size} x {self.device} {self.precision} | "
            f"batch {self.effective_batch}, lr {self.base_lr:.3g}, {self.total_steps} steps "
            f"({self.steps_per_epoch}/epoch, warmup {self.warmup_steps}) -> {self.args.output}"
        )


class KNNMonitor:
    """The weighted kNN classifier (DINO's ``eval_knn.py``: cosine similarity, ``k`` neighbours, weights
    ``exp(s / T)``) on the encoder's class-token features of ``--knn-data``: the train split is the memory
    bank, the test split the queries. Images reach the encoder through the model's evaluation transform
    (``whitebox.data_config``). It runs under its own random state: the training's RNG streams (torch,
    CUDA, NumPy, Python) are restored afterwards, so a run with the monitor trains exactly as one without.
    """

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device, precision: str) -> None:
        from whitebox.data import dataset_labels
        from whitebox.data_config import eval_transform, resolve_eval_config

        self.model, self.args, self.device, self.precision = model, args, device, precision
        self.sets = {}
        for split in ("train", "test"):
            try:
                ds = build_dataset(args.knn_data, split, args.download, args.data_root)
            except SplitNotFoundError as err:  # advice that fits pretraining: one source, both splits
                raise SplitNotFoundError(
                    f"--knn-data {args.knn_data}: {err}; the kNN monitor needs labelled 'train' and 'test' splits of "
                    "one source: a folder with train/ and test/ (or val/) class sub-folders, an .npz with x_train / "
                    "y_train and x_test / y_test, 'cifar10', or hf:NAME"
                ) from err
            dataset_labels(ds, f"--knn-data {args.knn_data} ({split} split)")
            if args.knn_max and len(ds) > args.knn_max:  # a seeded subset, drawn from its own generator
                g = torch.Generator().manual_seed(args.seed)
                keep = torch.randperm(len(ds), generator=g)[: args.knn_max].sort().values.tolist()
                ds = torch.utils.data.Subset(ds, keep)
            self.sets[split] = ds
        if args.knn_k > len(self.sets["train"]):
            raise ValueError(
                f"--knn-k {args.knn_k} is more than the {len(self.sets['train'])} training images of --knn-data "
                f"{args.knn_data}; give at most that many"
            )
        self.transform = eval_transform(model, uint8=True)  # uint8: the loader normalises with the record's
        config = resolve_eval_config(model)
        self.mean, self.std = config["mean"], config["std"]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``knn_top1`` and ``knn_top5`` (fractions) at the model's current weights."""
        import random

        import numpy as np

        from whitebox.train.knn import knn_accuracy
        from whitebox.train.probe import extract_features

        encoder = self.model.encoder
        was_training = encoder.training
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                feats = {
                    split: extract_features(
                        encoder,
                        ds,
                        self.model.encoder.patch_embed.img_size[0],
                        pool="token",
                        batch_size=self.args.batch_size,
                        device=self.device,
                        precision=self.precision,
                        on_bad_image=self.args.on_bad_image,
                        transform=self.transform,
                        mean=self.mean,
                        std=self.std,
                    )
                    for split, ds in self.sets.items()
                }
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            encoder.train(was_training)
        (f_train, y_train), (f_test, y_test) = feats["train"], feats["test"]
        top1, top5 = knn_accuracy(f_train, y_train, f_test, y_test, k=self.args.knn_k, temperature=self.args.knn_t)
        return {"knn_top1": top1, "knn_top5": top5}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    try:
        with RunFolder(args.output, info):
            result = MAEPretraining(args, info).run()
    finally:
        cleanup_distributed()
    if info.is_main:
        loss = f" loss {result['loss']:.4f}" if "loss" in result else ""
        score = "knn_top1" if args.best_by == "knn" else "probe_loss"
        metrics = f"{loss}, best {score.replace('_', ' ')} {result['best_' + score]:.4f}"
        print(finish_line(result, metrics, info.world_size), file=sys.stderr)
    return result


if __name__ == "__main__":
    run_main(main)
