"""Every flag of the recipe programs is checked when the command line is parsed (issue 17, item 3).

Finite, sign, range and relations between flags, with the flag's name and the allowed values in the
message; a flag that does not define a run says so where it is defined.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipes import finetune, linprobe, pretrain
from whitebox.cli import FREE_FLAGS

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]
PROGRAMS = {"pretrain": pretrain, "finetune": finetune, "linprobe": linprobe}
BASE = {"pretrain": [], "finetune": ["--data", "d.npz"], "linprobe": ["--data", "d.npz"]}

FINITE_POS = "must be a finite number > 0"
WHOLE_POS = "must be a whole number > 0"
WHOLE_NONNEG = "must be a whole number >= 0"
SEED = "must be a whole number >= 0 and <= 9223372036854775807"
DEVICE = "must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N"

# (program, flag, bad value, what the message says is allowed)
CASES = [
    *[("pretrain", "--lr", v, FINITE_POS) for v in ("inf", "nan", "-1", "0", "1e400", "fast")],
    ("pretrain", "--blr", "0", FINITE_POS),
    ("pretrain", "--blr", "-inf", FINITE_POS),
    ("pretrain", "--min-lr", "-1", "must be a finite number >= 0"),
    ("pretrain", "--min-lr", "nan", "must be a finite number >= 0"),
    ("pretrain", "--weight-decay", "-1", "must be a finite number >= 0"),
    ("pretrain", "--clip-grad", "0", FINITE_POS),
    ("pretrain", "--clip-grad", "inf", FINITE_POS),
    *[("pretrain", "--mask-ratio", v, "must be a finite number >= 0 and < 1") for v in ("1", "-0.1", "nan", "75")],
    ("pretrain", "--epochs", "0", WHOLE_POS),
    ("pretrain", "--epochs", "2.5", WHOLE_POS),
    ("pretrain", "--steps", "-3", WHOLE_POS),
    ("pretrain", "--steps", "1e3", WHOLE_POS),
    ("pretrain", "--batch-size", "0", WHOLE_POS),
    ("pretrain", "--accum-iter", "0", WHOLE_POS),
    ("pretrain", "--warmup-epochs", "-1", "must be a finite number >= 0"),
    ("pretrain", "--warmup-epochs", "inf", "must be a finite number >= 0"),
    ("pretrain", "--warmup-steps", "-1", WHOLE_NONNEG),
    *[("pretrain", "--seed", v, SEED) for v in ("1e23", "-1", str(2**63), "1.5", "0x10")],
    *[("pretrain", "--device", v, DEVICE) for v in ("bogus", "gpu", "cuda:x", "cuda:-1", "")],
    *[("pretrain", "--precision", v, "must be one of auto, fp32, bf16, fp16") for v in ("fp64", "half", "FP32")],
    ("pretrain", "--workers", "-1", WHOLE_NONNEG),
    ("pretrain", "--log-every", "0", WHOLE_POS),
    ("pretrain", "--save-every", "-1", WHOLE_NONNEG),
    ("pretrain", "--stop-after", "0", WHOLE_POS),
    ("pretrain", "--max-nonfinite-steps", "-1", WHOLE_NONNEG),
    ("pretrain", "--threads", "0", WHOLE_POS),
    ("pretrain", "--grid-every", "-1", WHOLE_NONNEG),
    ("pretrain", "--samples-per-epoch", "0", WHOLE_POS),
    *[("pretrain", f, "0", WHOLE_POS) for f in ("--img-size", "--patch-size", "--embed-dim", "--depth")],
    *[("pretrain", f, "-2", WHOLE_POS) for f in ("--num-heads", "--decoder-depth", "--decoder-num-heads")],
    ("pretrain", "--model-kwargs", '{"lambd": NaN}', "NaN is not a JSON number"),
    ("pretrain", "--model-kwargs", '{"lambd": 1e999}', "lambd: not a finite number"),
    ("pretrain", "--model-kwargs", '{"eta": [1, Infinity]}', "Infinity is not a JSON number"),
    ("pretrain", "--model-kwargs", "[1]", "expected a JSON object"),
    ("finetune", "--drop-path", "1", "must be a finite number >= 0 and < 1"),
    ("finetune", "--drop-path", "-0.1", "must be a finite number >= 0 and < 1"),
    ("finetune", "--layer-decay", "0", "must be a finite number > 0 and <= 1"),
    ("finetune", "--layer-decay", "1.5", "must be a finite number > 0 and <= 1"),
    ("finetune", "--smoothing", "1", "must be a finite number >= 0 and < 1"),
    ("finetune", "--mixup", "-1", "must be a finite number >= 0"),
    ("finetune", "--cutmix", "nan", "must be a finite number >= 0"),
    ("finetune", "--reprob", "1.5", "must be a finite number >= 0 and <= 1"),
    ("finetune", "--epochs", "0", WHOLE_POS),
    ("finetune", "--lr", "inf", FINITE_POS),
    ("finetune", "--weight-decay", "-1", "must be a finite number >= 0"),
    ("finetune", "--warmup-epochs", "-2", "must be a finite number >= 0"),
    ("finetune", "--seed", "1e23", SEED),
    ("finetune", "--device", "bogus", DEVICE),
    ("finetune", "--global-pool", "max", "invalid choice: 'max'"),
    ("finetune", "--batch-size", "-8", WHOLE_POS),
    ("linprobe", "--crop-pct", "0", "must be a finite number > 0 and <= 1"),
    ("linprobe", "--crop-pct", "1.5", "must be a finite number > 0 and <= 1"),
    ("linprobe", "--max-iter", "0", WHOLE_POS),
    ("linprobe", "--max-train", "0", WHOLE_POS),
    ("linprobe", "--batch-size", "0", WHOLE_POS),
    ("linprobe", "--lr", "0", FINITE_POS),
    ("linprobe", "--weight-decay", "-1", "must be a finite number >= 0"),
    ("linprobe", "--workers", "-1", WHOLE_NONNEG),
    ("linprobe", "--layer", "1.5", "must be a whole number"),
    ("linprobe", "--device", "bogus", DEVICE),
    ("linprobe", "--precision", "x", "must be one of auto, fp32, bf16, fp16"),
    ("linprobe", "--seed", "-1", SEED),
    ("linprobe", "--epochs", "0", WHOLE_POS),
    ("linprobe", "--img-size", "0", WHOLE_POS),
]


@pytest.mark.parametrize(("program", "flag", "value", "allowed"), CASES, ids=lambda v: str(v)[:24])
def test_a_bad_flag_value_is_refused_when_parsed_with_its_name_and_the_allowed_values(
    capsys, program, flag, value, allowed
):
    parser = PROGRAMS[program].build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*BASE[program], f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and allowed in err, err


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_the_good_values_pass(program):
    args = (
        PROGRAMS[program]
        .build_parser()
        .parse_args(
            [*BASE[program], "--seed", str(2**63 - 1), "--device", "cuda:1", "--precision", "bf16", "--workers", "0"]
        )
    )
    assert args.seed == 2**63 - 1 and args.device == "cuda:1"


# ----------------------------------------------------------------------------- relations between flags
def _labelled_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(24) % 3, x_test=x[:8], y_test=np.arange(8) % 3)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "1e-3", "--min-lr", "10"], r"--min-lr 10 is above the peak --lr 0.001"),
        (["--min-lr", "10"], r"--min-lr 10 is above the peak lr 0.000375 \(--blr 0.004 x global batch 24 / 256\)"),
        (["--steps", "10", "--warmup-steps", "12"], r"--warmup-steps 12 is not shorter than the run \(--steps 10\)"),
        (["--epochs", "3", "--warmup-epochs", "3"], r"--warmup-epochs 3 is not shorter than the run \(--epochs 3\)"),
        (["--device", "cuda:99"], r"--device cuda:99: (CUDA is not available here|no cuda device 99)"),
        (["--device", "mps"], r"--device mps: MPS \(Apple GPU\) is not available here"),
        (["--precision", "fp16", "--device", "cpu"], r"--precision fp16 needs a CUDA device"),
    ],
)
def test_pretraining_relations_between_flags_are_named(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        pretrain.main([*TINY, "--batch-size", "24", "--output", str(tmp_path / "o"), *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0.1", "--min-lr", "1"], r"--min-lr 1 is above the peak lr 0.1 \(--lr\)"),
        (["--min-lr", "1"], r"--min-lr 1 is above the peak lr 3.13e-05 \(--blr 0.001 x global batch 8 / 256\)"),
        (["--aa", "rand-m9-bogus"], r"--aa 'rand-m9-bogus': RandAugment has no section bogus"),
        (["--aa", "rand-m9-x5"], r"--aa 'rand-m9-x5' is not a timm auto-augment policy"),
        (["--aa", "nonsense"], r"--aa 'nonsense' is not a timm auto-augment policy"),
        (["--epochs", "2", "--warmup-epochs", "2"], r"--warmup-epochs 2 is not shorter than the run"),
        (["--device", "mps"], r"--device mps: MPS"),
    ],
)
def test_fine_tuning_relations_between_flags_are_named(tmp_path, argv, message):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY, "--data", str(data)]
    with pytest.raises(ValueError, match=message):
        finetune.main([*common, "--batch-size", "8", "--output", str(tmp_path / "o"), *argv])


@pytest.mark.parametrize("layer", ["1", "-2", "7"])
def test_a_linear_probe_layer_outside_the_encoder_is_named(tmp_path, layer):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY[:6], "--data", str(data)]
    with pytest.raises(ValueError, match=rf"--layer {layer} is outside this 1-block encoder: give 0 to 0 \(or -1"):
        linprobe.main([*common, "--layer", layer, "--output", str(tmp_path / "o")])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("program", "argv", "status", "line"),
    [
        ("pretrain", ["--lr", "inf"], 2, "error: argument --lr: must be a finite number > 0, got 'inf'"),
        ("pretrain", ["--weight-decay", "-1"], 2, "error: argument --weight-decay: must be a finite number >= 0"),
        ("pretrain", ["--seed", "1e23"], 2, "error: argument --seed: must be a whole number >= 0 and <= "),
        ("pretrain", ["--device", "bogus"], 2, "error: argument --device: must be auto, cpu, cuda, cuda:N, mps"),
        ("pretrain", ["--lr", "1e-3", "--min-lr", "10"], 1, "error: --min-lr 10 is above the peak --lr 0.001"),
        ("finetune", ["--data", "x.npz", "--drop-path", "2"], 2, "error: argument --drop-path: must be a finite"),
        ("linprobe", ["--data", "x.npz", "--crop-pct", "0"], 2, "error: argument --crop-pct: must be a finite"),
    ],
)
def test_the_programs_refuse_a_bad_flag_before_work_starts(tmp_path, program, argv, status, line):
    cmd = [sys.executable, str(ROOT / "recipes" / f"{program}.py"), *argv, "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert line in proc.stderr.strip().splitlines()[-1], proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()  # nothing started


# ----------------------------------------------------------------------------- flags that do not define a run
def test_flags_that_do_not_define_a_run_say_so_where_they_are_defined():
    for module in (pretrain, finetune):
        actions = {a.dest: a for a in module.build_parser()._actions}
        free = {d for d, a in actions.items() if getattr(a, "defines_run", True) is False}
        assert {"output", "resume", "workers", "log_every", "save_every", "stop_after", "device"} <= free
        assert {"batch_size", "accum_iter", "max_nonfinite_steps", "no_progress"} <= free  # global batch: compared
        assert not free & {"seed", "lr", "blr", "min_lr", "epochs", "weight_decay", "precision", "model", "data"}
        assert free <= FREE_FLAGS
    assert {"threads", "compile", "grid_every", "grad_checkpointing"} <= FREE_FLAGS
    assert "fsdp" not in FREE_FLAGS and "mask_ratio" not in FREE_FLAGS
