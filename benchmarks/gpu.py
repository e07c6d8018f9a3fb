"""GPU train-step and inference throughput, model-FLOPs utilisation and peak memory of CRATE-MAE-Base.

One command (about 4 minutes on one H100, most of it ``torch.compile``)::

    python benchmarks/gpu.py --out gpu.json            # the full table on cuda
    python benchmarks/gpu.py --device cpu --small      # CPU smoke test of every row (seconds)

Rows (train step = forward, loss, backward and a fused AdamW step, on one fixed input batch; data
loading is not included):

* ``ref_fp32``       the plain reference (``tests/reference.py``: explicit softmax attention, the
                      three-product ISTA, MAE's gather masking) in eager fp32 (TF32 left off);
* ``ref_bf16``       the same under bfloat16 autocast (fp32 master weights);
* ``ours_bf16``      ``crate_mae_base`` eager under bfloat16 autocast;
* ``ours_compiled``  the same under ``torch.compile(fullgraph=True)``;
* ``features``       inference (no grad) ``forward_features`` of unmasked images, compiled bf16;
* ``ours_384``       the compiled bf16 train step at 384 px;
* ``vit_mae_bf16`` / ``vit_mae_compiled``  the ViT-MAE twin (timm blocks), for comparison.

MFU = counted FLOPs x images/s / peak, with FLOPs from ``whitebox.flops.count_flops`` (a train step
is 3 x the forward's matrix-product FLOPs; the reference rows use the same count, although the
reference's three-product ISTA does 2 N d^2 more per encoder layer). Every row uses one batch size,
so peak memories compare; ``--batch auto`` picks the largest multiple of 32 at which the most
memory-hungry row (``ref_fp32``) is predicted to fill 80% of the GPU (from two small probe steps).

Before the table, correctness checks on the device: bf16 autocast against fp32 (ours, same weights
and mask), ours against the reference in fp32, a bf16 forward + backward with SDPA restricted to the
flash kernel (MSSA's q = k = v must not keep it out), and (cuda) one train step under
``torch.cuda.set_sync_debug_mode("error")`` to prove the step has no host-device sync.
The JSON is rewritten (atomically) after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import median_time, peak_memory_bytes, reset_peak_memory  # noqa: E402
from reference import RefCrateMAE, crate_mae_to_official  # noqa: E402

import whitebox  # noqa: E402
from whitebox.flops import count_flops, format_flops  # noqa: E402
from whitebox.io import write_json  # noqa: E402

PEAK_TFLOPS = 790.0  # dense bf16 matrix work on one H100, as the issue states it
TARGETS = dict(mfu=0.45, speedup_vs_ref_bf16=1.5, memory_vs_ref_bf16=0.6)
# bf16 keeps 8 significant bits (relative rounding 2^-9). CRATE re-normalises after every layer and
# has no residual around ISTA, so rounding errors compound over depth: with CRATE-MAE-Base at its
# initialisation, on real photos, CPU bf16 autocast gave 0.3% relative error after encoder layer 1,
# 2.9% after layer 12 and 3.0% at the prediction (the plain reference under autocast: 2.8%), and
# 0.12% on the loss. The pass marks leave 2x room over those measurements.
BF16_PRED_TOL = 6e-2  # ||pred_bf16 - pred_fp32|| / ||pred_fp32|| (and the latent's)
BF16_LOSS_TOL = 1e-2  # |loss_bf16 - loss_fp32| / loss_fp32
FP32_REF_TOL = 1e-4  # ours vs reference in fp32 (different but equivalent orders of operations)

ROWS = (
    "ref_fp32",
    "ref_bf16",
    "ours_bf16",
    "ours_compiled",
    "features",
    "ours_384",
    "vit_mae_bf16",
    "vit_mae_compiled",
)


@dataclass(frozen=True)
class Config:
    """Model geometry: the real CRATE-MAE-Base, or a tiny stand-in for the CPU smoke test."""

    img_size: int
    big_img_size: int
    model_kwargs: dict[str, Any]
    vit_kwargs: dict[str, Any]

    @staticmethod
    def make(small: bool) -> Config:
        if small:
            tiny = dict(patch_size=8, embed_dim=64, depth=2, num_heads=4)
            return Config(32, 48, tiny, dict(tiny, decoder_depth=2, decoder_num_heads=4))
        return Config(224, 384, {}, {})


# --------------------------------------------------------------------------------------------- models
def build_ours(name: str, img_size: int, cfg: Config, device: torch.device) -> torch.nn.Module:
    kwargs = cfg.vit_kwargs if name.startswith("vit") else cfg.model_kwargs
    return whitebox.create_model(name, img_size=img_size, **kwargs).to(device)


def build_ref(ours: torch.nn.Module, img_size: int, device: torch.device) -> RefCrateMAE:
    """The reference with ``ours``'s weights (the official layout), so outputs can be compared."""
    enc = ours.encoder
    ref = RefCrateMAE(
        img_size=img_size,
        patch=enc.patch_embed.patch_size,
        dim=enc.embed_dim,
        depth=len(enc.blocks),
        heads=enc.blocks[0].attn.num_heads,
        decoder_depth=len(ours.decoder_blocks),
        eta=enc.blocks[0].ista.eta,
        lambd=enc.blocks[0].ista.lambd,
    ).to(device)
    ref.load_state_dict(crate_mae_to_official(ours, ref))
    return ref


def loss_fn(model: torch.nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """``f(x, noise=None) -> loss`` for ours or the reference.

    The reference creates its mask with ``torch.rand`` / ``torch.ones`` and no device argument; it
    runs under ``with torch.device(device)`` so they land on the device (and no copy syncs).
    """
    if isinstance(model, RefCrateMAE):

        def ref_loss(x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
            with torch.device(device):
                return model(x, noise=noise)[0]

        return ref_loss
    return lambda x, noise=None: model(x, noise=noise).loss


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")


def train_step_fn(
    model: torch.nn.Module, device: torch.device, bf16: bool, compiled: bool, compile_kwargs: dict[str, Any]
) -> Callable[[torch.Tensor], None]:
    model.train()
    f = loss_fn(model, device)
    if compiled:
        f = torch.compile(f, fullgraph=True, **compile_kwargs)
    opt = make_optimizer(model, device)

    def step(x: torch.Tensor) -> None:
        with autocast(device, bf16):
            loss = f(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def features_fn(
    model: torch.nn.Module, device: torch.device, bf16: bool, compiled: bool, compile_kwargs: dict[str, Any]
) -> Callable[[torch.Tensor], None]:
    model.eval()
    f = model.forward_features
    if compiled:
        f = torch.compile(f, fullgraph=True, **compile_kwargs)

    def step(x: torch.Tensor) -> None:
        with torch.no_grad(), autocast(device, bf16):
            f(x)

    return step


# --------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    name: str
    model: str  # registered name
    impl: str  # "reference" or "ours"
    bf16: bool
    compiled: bool
    task: str  # "train" or "features"
    big: bool = False  # the larger image size


SPECS = {
    "ref_fp32": RowSpec("ref_fp32", "crate_mae_base", "reference", False, False, "train"),
    "ref_bf16": RowSpec("ref_bf16", "crate_mae_base", "reference", True, False, "train"),
    "ours_bf16": RowSpec("ours_bf16", "crate_mae_base", "ours", True, False, "train"),
    "ours_compiled": RowSpec("ours_compiled", "crate_mae_base", "ours", True, True, "train"),
    "features": RowSpec("features", "crate_mae_base", "ours", True, True, "features"),
    "ours_384": RowSpec("ours_384", "crate_mae_base", "ours", True, True, "train", big=True),
    "vit_mae_bf16": RowSpec("vit_mae_bf16", "vit_mae_base", "ours", True, False, "train"),
    "vit_mae_compiled": RowSpec("vit_mae_compiled", "vit_mae_base", "ours", True, True, "train"),
}


def free_memory(device: torch.device) -> None:
    torch._dynamo.reset()  # drop compiled graphs (and the tensors they hold)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(backend=args.compile_backend)
    if args.compile_mode:
        kwargs["mode"] = args.compile_mode
    return kwargs


def make_step(spec: RowSpec, img_size: int, cfg: Config, device: torch.device, compile_kwargs: dict[str, Any]):
    ours = build_ours(spec.model, img_size, cfg, device)
    model = build_ref(ours, img_size, device) if spec.impl == "reference" else ours
    make = train_step_fn if spec.task == "train" else features_fn
    return model, make(model, device, spec.bf16, spec.compiled, compile_kwargs)


def run_row(spec: RowSpec, args: argparse.Namespace, cfg: Config, device: torch.device, batch: int) -> dict[str, Any]:
    img_size = cfg.big_img_size if spec.big else cfg.img_size
    with torch.device("meta"):  # shapes only
        flop_model = build_ours(spec.model, img_size, cfg, torch.device("meta"))
    mode = "train" if spec.task == "train" else "features"
    flops = count_flops(flop_model, mode=mode).total
    row: dict[str, Any] = dict(
        name=spec.name,
        model=spec.model,
        impl=spec.impl,
        precision="bf16-autocast" if spec.bf16 else "fp32",
        compiled=spec.compiled,
        task=spec.task,
        img_size=img_size,
        batch=batch,
        flops_per_image=flops,
    )
    free_memory(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    try:
        row.update(measure(spec, args, cfg, device, batch, img_size, flops), error=None)
    except Exception as err:  # one failing row must not lose the others: recorded and shown
        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        traceback.print_exc()
    row["wall_s"] = round(time.perf_counter() - start, 1)
    free_memory(device)
    return row


def measure(
    spec: RowSpec, args: argparse.Namespace, cfg: Config, device: torch.device, batch: int, img_size: int, flops: int
) -> dict[str, Any]:
    """Build, run one untimed first step (compilation, optimizer state), then time; the model and
    its optimizer go out of scope on return."""
    _, step = make_step(spec, img_size, cfg, device, compile_options(args))
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    first = time.perf_counter()
    step(x)
    first_step_s = time.perf_counter() - first
    reset_peak_memory(device)  # steady state: not compile-time autotuning buffers (optimizer state stays live)
    timing = median_time(lambda: step(x), warmup=args.warmup, reps=args.reps, device=device)
    peak = peak_memory_bytes(device)
    ips = batch / timing.median
    return dict(
        first_step_s=round(first_step_s, 3),
        step_ms=1e3 * timing.median,
        step_ms_min=1e3 * timing.min,
        images_per_s=ips,
        tflops=flops * ips / 1e12,
        mfu=flops * ips / (args.peak_tflops * 1e12),
        peak_mem_gib=None if peak is None else peak / 2**30,
    )


# --------------------------------------------------------------------------------------------- batch
def auto_batch(cfg: Config, device: torch.device, args: argparse.Namespace) -> int:
    """Largest multiple of 32 (at most 512) at which ``ref_fp32`` should peak at 80% of the GPU.

    Peak memory is linear in the batch (weights and optimizer state + activations per image); two
    probe steps at batches 8 and 16 give the line.
    """
    if device.type != "cuda":
        return 4
    spec = SPECS["ref_fp32"]
    peaks = []
    for b in (8, 16):
        free_memory(device)
        reset_peak_memory(device)
        model, step = make_step(spec, cfg.img_size, cfg, device, {})
        step(torch.randn(b, 3, cfg.img_size, cfg.img_size, device=device))
        peaks.append(peak_memory_bytes(device))
        del model, step
    per_image = (peaks[1] - peaks[0]) / 8
    fixed = peaks[0] - 8 * per_image
    total = torch.cuda.get_device_properties(device).total_memory
    batch = int((0.80 * total - fixed) / per_image) // 32 * 32
    free_memory(device)
    return max(32, min(512, batch))


# --------------------------------------------------------------------------------------------- checks
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def correctness_checks(cfg: Config, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """bf16 vs fp32, ours vs reference (fp32), and no host-device sync in a train step (cuda)."""
    torch.manual_seed(0)
    batch = 8
    ours = build_ours("crate_mae_base", cfg.img_size, cfg, device).eval()
    ref = build_ref(ours, cfg.img_size, device).eval()
    x, inputs = sample_images(batch, cfg.img_size, device)
    length = (cfg.img_size // ours.patch_size) ** 2
    noise = torch.rand(batch, length, device=device)
    checks: dict[str, Any] = {}
    with torch.no_grad():
        out32 = ours(x, noise=noise)
        ref_loss, ref_pred, _ = loss_and_pred_ref(ref, x, noise, device)
        with autocast(device, True):
            out16 = ours(x, noise=noise)
            _, ref_pred16, _ = loss_and_pred_ref(ref, x, noise, device)
    pred_err, latent_err = rel_err(out16.pred, out32.pred), rel_err(out16.latent, out32.latent)
    loss_err = abs(float(out16.loss) - float(out32.loss)) / abs(float(out32.loss))
    checks["bf16_vs_fp32"] = dict(
        inputs=inputs,
        pred_rel_l2=pred_err,
        latent_rel_l2=latent_err,
        loss_rel=loss_err,
        reference_pred_rel_l2=rel_err(ref_pred16, ref_pred),  # the same measure for the plain reference
        tol_pred=BF16_PRED_TOL,
        tol_loss=BF16_LOSS_TOL,
        ok=max(pred_err, latent_err) <= BF16_PRED_TOL and loss_err <= BF16_LOSS_TOL,
    )
    ref_err = rel_err(out32.pred, ref_pred)
    ref_loss_err = abs(float(out32.loss) - float(ref_loss)) / abs(float(ref_loss))
    checks["ours_vs_ref_fp32"] = dict(
        pred_rel_l2=ref_err, loss_rel=ref_loss_err, tol=FP32_REF_TOL, ok=max(ref_err, ref_loss_err) <= FP32_REF_TOL
    )
    checks["flash_sdpa"] = flash_check(ours, x, device)
    if device.type == "cuda":
        checks["no_host_sync"] = sync_check(ours, x, device)
    del ours, ref
    free_memory(device)
    return checks


def loss_and_pred_ref(ref: RefCrateMAE, x: torch.Tensor, noise: torch.Tensor, device: torch.device):
    with torch.device(device):
        return ref(x, noise=noise)


def flash_check(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """A bf16 forward and backward with SDPA restricted to the flash kernel: it raises if MSSA's
    ``scaled_dot_product_attention(w, w, w)`` (q = k = v one tensor) cannot run on it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.train()
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(device, True):
            loss = model(x).loss
        loss.backward()
        result = dict(ok=True, error=None)
    except RuntimeError as err:
        result = dict(ok=False, error=str(err).splitlines()[0][:300])
    model.zero_grad(set_to_none=True)
    return result


def sync_check(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """One eager bf16 train step (mask drawn on the device, loss, backward, fused AdamW) with
    ``torch.cuda.set_sync_debug_mode("error")``: any host-device synchronisation raises."""
    model.train()
    step = train_step_fn(model, device, bf16=True, compiled=False, compile_kwargs={})
    step(x)  # first step outside the check: lazy initialisation (handles, optimizer state)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(x)
        result = dict(ok=True, error=None)
    except RuntimeError as err:
        result = dict(ok=False, error=str(err).splitlines()[0][:300])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return result


def sample_images(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """Real photos (the bundled CC0 samples), ImageNet-normalised, and what they are; Gaussian
    noise, said so, where scikit-image (their source) is not installed."""
    try:
        from whitebox.sample_images import sample_batch

        imgs = torch.from_numpy(sample_batch(size, batch)).permute(0, 3, 1, 2).float() / 255
    except ImportError:
        return torch.randn(batch, 3, size, size, device=device), "gaussian noise (scikit-image not installed)"
    if imgs.shape[0] < batch:
        imgs = imgs.repeat((batch + imgs.shape[0] - 1) // imgs.shape[0], 1, 1, 1)[:batch]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((imgs - mean) / std).to(device), "bundled sample photos"


# --------------------------------------------------------------------------------------------- report
def environment(device: torch.device) -> dict[str, Any]:
    import timm

    env = dict(
        device=str(device),
        torch=torch.__version__,
        timm=timm.__version__,
        python=platform.python_version(),
        allow_tf32=torch.backends.cuda.matmul.allow_tf32,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["name"] == "ref_bf16" and not r.get("error")), None)
    head = f"{'row':<17}{'model':<16}{'prec':<6}{'comp':<5}{'task':<9}{'img':>4}{'batch':>6}"
    head += f"{'ms/step':>10}{'img/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}{'x ref16':>8}{'mem/ref16':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        left = f"{r['name']:<17}{r['model']:<16}{'bf16' if r['precision'] != 'fp32' else 'fp32':<6}"
        left += f"{'yes' if r['compiled'] else 'no':<5}{r['task']:<9}{r['img_size']:>4}{r['batch']:>6}"
        if r.get("error"):
            lines.append(f"{left}  ERROR {r['error'][:90]}")
            continue
        comparable = base is not None and r["task"] == "train" and r["img_size"] == base["img_size"]
        speed = r["images_per_s"] / base["images_per_s"] if comparable and "crate" in r["model"] else None
        mem = None
        if speed is not None and r["peak_mem_gib"] is not None and base["peak_mem_gib"]:
            mem = r["peak_mem_gib"] / base["peak_mem_gib"]
        lines.append(
            f"{left}{r['step_ms']:>10.1f}{r['images_per_s']:>10.1f}{r['tflops']:>9.1f}{100 * r['mfu']:>6.1f}%"
            f"{fmt(r['peak_mem_gib'], '.2f'):>9}{fmt(speed, '.2f'):>8}{fmt(mem, '.2f'):>10}"
        )
    return "\n".join(lines)


def target_report(rows: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    by = {r["name"]: r for r in rows if not r.get("error")}
    if "ours_compiled" not in by or "ref_bf16" not in by:
        return {}
    ours, ref = by["ours_compiled"], by["ref_bf16"]
    measured = dict(
        mfu=ours["mfu"],
        speedup_vs_ref_bf16=ours["images_per_s"] / ref["images_per_s"],
        memory_vs_ref_bf16=None if ref["peak_mem_gib"] is None else ours["peak_mem_gib"] / ref["peak_mem_gib"],
    )
    out = {}
    for key, target in TARGETS.items():
        value = measured[key]
        ok = (
            None
            if value is None or device.type != "cuda"
            else (value <= target if "memory" in key else value >= target)
        )
        out[key] = dict(value=value, target=target, ok=ok)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--small", action="store_true", help="tiny models (smoke test): 32 px, width 64, depth 2")
    parser.add_argument("--batch", default="auto", help="images per step, or 'auto' (fill the GPU; 4 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (cuda 3, cpu 0)")
    parser.add_argument("--reps", type=int, default=None, help="timed steps; the median is reported (cuda 10, cpu 2)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak for MFU")
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (cuda: inductor, cpu: aot_eager)"
    )
    parser.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: none)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (cpu default 1: tiny ops gain nothing from more)"
    )
    parser.add_argument("--no-checks", action="store_true", help="skip the correctness checks")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device; use --device cpu --small for a smoke run")
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows_wanted) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) > 0):
        parser.error(f"--batch must be a positive integer or 'auto', got {args.batch!r}")
    cuda = device.type == "cuda"
    args.warmup = (3 if cuda else 0) if args.warmup is None else args.warmup
    args.reps = (10 if cuda else 2) if args.reps is None else args.reps
    args.compile_backend = args.compile_backend or ("inductor" if cuda else "aot_eager")
    if not cuda or args.threads is not None:
        # On a shared CPU, OpenMP threads spinning for busy cores made tiny steps 10-100x slower.
        torch.set_num_threads(args.threads or 1)
    cfg = Config.make(args.small)
    t0 = time.perf_counter()

    env = environment(device)
    with torch.device("meta"):
        base = build_ours("crate_mae_base", cfg.img_size, cfg, torch.device("meta"))
        big = build_ours("crate_mae_base", cfg.big_img_size, cfg, torch.device("meta"))
    fwd, fwd_big = count_flops(base), count_flops(big)
    label = "crate_mae_base" + (" (--small: tiny stand-in)" if args.small else "")
    print(f"# whitebox GPU benchmark on {env.get('gpu') or env['device']}; torch {env['torch']}, timm {env['timm']}")
    for size, count in ((cfg.img_size, fwd), (cfg.big_img_size, fwd_big)):
        print(
            f"# {label} train step at {size} px: 3 x {count.total:,} = {3 * count.total:,} FLOP per image "
            f"({format_flops(3 * count.total)}; train = 3 x forward matrix-product FLOPs)"
        )
    print(f"# MFU against {args.peak_tflops:g} TFLOP/s dense bf16")

    result: dict[str, Any] = dict(
        environment=env,
        flops_per_image=dict(
            forward=fwd.total, train=3 * fwd.total, forward_big=fwd_big.total, train_big=3 * fwd_big.total
        ),
        flops_breakdown_forward=fwd.breakdown,
        peak_tflops=args.peak_tflops,
        small=args.small,
        rows=[],
        complete=False,
    )

    def save() -> None:
        if args.out is not None:
            write_json(result, args.out)

    if not args.no_checks:
        result["checks"] = correctness_checks(cfg, device, args)
        for name, check in result["checks"].items():
            print(f"# check {name}: {'PASS' if check['ok'] else 'FAIL'} {check}")
        save()
    batch = auto_batch(cfg, device, args) if args.batch == "auto" else int(args.batch)
    print(f"# batch {batch}; warmup {args.warmup}, median of {args.reps}; torch.compile {compile_options(args)}")
    for name in rows_wanted:
        row = run_row(SPECS[name], args, cfg, device, batch)
        result["rows"].append(row)
        status = row.get("error") or f"{row['images_per_s']:.1f} img/s"
        print(f"# [{time.perf_counter() - t0:6.1f}s] {name}: {status}", flush=True)
        save()
    result["targets"] = target_report(result["rows"], device)
    result["complete"] = True
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    save()

    print(table(result["rows"]))
    for key, t in result["targets"].items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["ok"]]
        print(f"target {key}: {fmt(t['value'], '.3f')} (target {t['target']}) {verdict}")
    print(f"total {result['wall_s']} s" + (f"; JSON written to {args.out}" if args.out else ""))
    failed = any(r.get("error") for r in result["rows"]) or not all(c["ok"] for c in result.get("checks", {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
