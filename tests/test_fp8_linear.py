"""mpcourse.fp8.linear: the fp8 linear layer's three GEMMs, model conversion, recipes, torchao, benchmark."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from mpcourse import data, device, fp8, models, reference, train
from mpcourse.bench import fp8 as bench
from mpcourse.fp8.linear import FP8Linear


def _manual(
    layer: FP8Linear, x: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y, dx, dw computed by hand: quantise each GEMM's operands along its K, multiply the dequantised values."""
    cfg = layer.config
    w = layer.weight.detach()

    def q(t: torch.Tensor, recipe: str, fmt: str) -> torch.Tensor:
        return (
            fp8.quantize(t, recipe, fmt, block_size=cfg.block_of(recipe), pow2_scales=cfg.pow2_scales)
            .dequantize()
            .double()
        )

    f, g = cfg.forward_format, cfg.backward_format
    y = q(x, cfg.input_recipe, f) @ q(w, cfg.weight_recipe, f).T + layer.bias.detach().double()
    dx = q(dy, cfg.grad_recipe, g) @ q(w.t(), cfg.weight_recipe, f).T
    dw = q(dy.t(), cfg.grad_recipe, g) @ q(x.t(), cfg.input_recipe, f).T
    return y, dx, dw


@pytest.mark.parametrize("config", ["fp8_tensorwise", "fp8_rowwise", "fp8_blockwise", "mxfp8"])
def test_three_gemms_use_quantised_operands_and_a_straight_through_backward(config: str) -> None:
    torch.manual_seed(0)
    layer = FP8Linear(256, 128, config=config, gemm="emulated")
    x = torch.randn(128, 256, requires_grad=True)
    dy = torch.randn(128, 128)
    y = layer(x)
    y.backward(dy)
    want_y, want_dx, want_dw = _manual(layer, x.detach(), dy)
    assert fp8.relative_error(y, want_y) < 1e-6
    assert fp8.relative_error(x.grad, want_dx) < 1e-6
    assert fp8.relative_error(layer.weight.grad, want_dw) < 1e-6
    assert torch.allclose(layer.bias.grad, dy.sum(0))
    assert layer.weight.dtype == torch.float32  # the master weight stays fp32
    # and it is close to the fp32 layer: straight-through means the gradient of the unquantised function
    ref = nn.functional.linear(x.detach(), layer.weight.detach(), layer.bias.detach())
    assert fp8.relative_error(y, ref) < 0.1


def test_delayed_layer_reuses_the_forward_cast_and_learns_scales() -> None:
    torch.manual_seed(0)
    layer = FP8Linear(64, 32, config="fp8_delayed")
    for _ in range(3):
        layer(torch.randn(16, 64) * 10).sum().backward()
    assert set(layer.scalers) == {"input", "weight", "grad_output"}
    history = layer.scalers["input"].amax_history
    assert (history[-3:] > 0).all() and history[0] == 0  # three steps recorded, slot 0 cleared for the next
    assert layer.scalers["grad_output"].fmt.name == "float8_e5m2"
    assert layer.scalers["input"].scale.item() == pytest.approx(448 / history.max().item(), rel=1e-6)


def test_wgrad_blocks_along_a_batch_that_is_not_a_multiple_of_the_block() -> None:
    torch.manual_seed(0)
    layer = FP8Linear(128, 128, config="fp8_blockwise", gemm="emulated")
    x = torch.randn(100, 128, requires_grad=True)  # 100 rows: the wgrad GEMM pads them to 128 with zeros
    dy = torch.randn(100, 128)
    layer(x).backward(dy)
    padded_x, padded_dy = nn.functional.pad(x.detach(), (0, 0, 0, 28)), nn.functional.pad(dy, (0, 0, 0, 28))
    _, _, want_dw = _manual(layer, padded_x, padded_dy)
    assert fp8.relative_error(layer.weight.grad, want_dw) < 1e-6


def test_a_tensor_scaled_cast_is_not_reused_where_the_other_operand_needs_padding() -> None:
    """Blockwise activations with tensorwise gradients: the wgrad GEMM pads both of its operands."""
    torch.manual_seed(0)
    mixed = fp8.FP8Config(
        "mixed",
        "blockwise activations, tensorwise weights and gradients",
        "blockwise",
        "tensorwise",
        "tensorwise",
        block_size=128,
    )
    layer = FP8Linear(128, 128, config=mixed, gemm="emulated")
    assert (
        layer.wgrad_block() == 128 and layer.tensor_scaled("grad_output") and not layer.tensor_scaled("input")
    )
    x = torch.randn(100, 128, requires_grad=True)
    dy = torch.randn(100, 128)
    layer(x).backward(dy)
    padded_x, padded_dy = nn.functional.pad(x.detach(), (0, 0, 0, 28)), nn.functional.pad(dy, (0, 0, 0, 28))
    _, want_dx, want_dw = _manual(layer, padded_x, padded_dy)
    assert fp8.relative_error(layer.weight.grad, want_dw) < 1e-6
    assert fp8.relative_error(x.grad, want_dx[:100]) < 1e-6


def test_the_autograd_function_reads_as_the_three_gemms() -> None:
    """What the fp8 chapter shows: forward and backward of FP8LinearFunction, from the package's source."""
    import mpcourse

    code = mpcourse.source.source(fp8.linear.FP8LinearFunction, docstrings=False)
    for gemm in ("y = x w^T", "dx = dy w", "dw = dy^T x", "Straight through"):
        assert gemm in code
    assert code.count("layer.matmul(") == 3


def test_autocast_output_dtype_and_3d_inputs() -> None:
    layer = FP8Linear(64, 32, config="mxfp8")
    x = torch.randn(2, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 32)
    assert layer(x).dtype == torch.float32


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="no torch._scaled_mm")
def test_scaled_mm_gemm_agrees_with_the_emulation() -> None:
    torch.manual_seed(0)
    emulated = FP8Linear(64, 32, config="fp8_tensorwise", gemm="emulated")
    real = FP8Linear(64, 32, config="fp8_tensorwise", gemm="scaled_mm")
    real.load_state_dict(emulated.state_dict())
    x = torch.randn(16, 64)
    try:
        out = real(x)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {err}")
    assert real.used_scaled_mm
    assert fp8.relative_error(out, emulated(x)) < 1e-6


def test_auto_gemm_falls_back_to_the_emulation_without_fp8_units() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    layer = FP8Linear(64, 32, config="fp8_tensorwise", gemm="auto")
    layer(torch.randn(4, 64)).sum().backward()
    assert not layer.used_scaled_mm


def test_convert_keeps_first_last_and_indivisible_layers() -> None:
    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.Linear(128, 96),
        nn.Linear(96, 128),
        nn.Linear(128, 10),
    )
    weight = model[2].weight
    table = fp8.plan(model, "fp8_blockwise")
    assert table["fp8"].tolist() == [False, True, False, False, False]
    assert "first" in table.loc[0, "reason"] and "last" in table.loc[4, "reason"]
    assert "not divisible" in table.loc[2, "reason"]
    fp8.convert_to_fp8(model, "fp8_blockwise")
    assert isinstance(model[2], FP8Linear) and model[2].weight is weight
    assert not isinstance(model[0], FP8Linear) and not isinstance(model[3], FP8Linear)
    everything = fp8.plan(nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32)), "mxfp8", skip_first_last=False)
    assert everything["fp8"].all()
    filtered = fp8.plan(model, "mxfp8", module_filter=lambda name, m: name != "3")
    assert "module_filter" in filtered.set_index("layer").loc["3", "reason"]


def test_bad_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="every tensor"):
        fp8.FP8Config("x", "mixed", input_recipe="delayed")
    with pytest.raises(ValueError, match="stores elements in"):
        fp8.FP8Config("x", "fp4 delayed", "delayed", "delayed", "delayed", forward_format="e2m1")
    with pytest.raises(ValueError, match="accepted: fp8_tensorwise"):
        FP8Linear(8, 8, config="fp8_fastest")
    with pytest.raises(ValueError, match="accepted: auto, emulated, scaled_mm"):
        FP8Linear(8, 8, gemm="cublas")


def test_training_recipes_are_registered_and_train() -> None:
    for name in (*fp8.CONFIGS, "torchao_tensorwise", "torchao_rowwise"):
        recipe = train.get_recipe(name)
        assert recipe.precision == "fp8" and recipe.autocast_dtype == torch.bfloat16 and not recipe.pure
    fp8.register_training_recipes()  # idempotent
    digits = data.load_images("digits", verbose=False)
    for name in ("fp8_delayed", "mxfp8"):
        run = train.train(
            lambda: models.MLP(64, 10, width=64, depth=3),
            digits,
            name,
            steps=30,
            batch_size=64,
            progress=False,
            verbose=False,
            lr=3e-3,
        )
        assert not run.diverged
        losses = run.frame["loss"]
        assert losses.tail(5).mean() < 0.6 * losses.head(5).mean()
        assert sum(isinstance(m, FP8Linear) for m in run.model.modules()) == 2


def test_an_fp8_run_whose_gemms_were_emulated_is_not_called_native() -> None:
    """An H100 has fp8 tensor cores, but a run is native only if its GEMMs reached them."""
    digits = data.load_images("digits", verbose=False)
    h100 = device.capabilities(preset="h100")

    def run(recipe: str) -> train.History:
        return train.train(
            lambda: models.MLP(64, 10, width=64, depth=3),
            digits,
            recipe,
            steps=2,
            batch_size=64,
            caps=h100,
            device="cpu",
            progress=False,
            verbose=False,
        )

    emulated = run("fp8_tensorwise")  # on the CPU, no layer can use the GPU's _scaled_mm
    assert emulated.status == "emulated" and any("ran emulated in fp32" in n for n in emulated.notes)
    assert run("bf16").status == "native"  # no fp8 layer: the hardware's verdict stands


def test_torchao_path_is_refused_clearly_without_fp8_hardware() -> None:
    caps = device.capabilities(preset="a100")
    ok, why = fp8.torchao_status(caps)
    assert not ok and "sm_89" in why
    if not torch.cuda.is_available():
        with pytest.raises(fp8.UnsupportedFP8Error, match="sm_89"):
            fp8.torchao_convert(nn.Sequential(nn.Linear(16, 16)))
    with pytest.raises(ValueError, match="accepted: tensorwise, rowwise"):
        fp8.torchao_convert(nn.Sequential(nn.Linear(16, 16)), "mxfp8")


class _BrokenTorchao(types.ModuleType):
    """A torchao whose import fails as one built for another torch does (not with ImportError)."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"operator torchao::{name} does not exist (extension built for another torch)")


def test_torchao_that_fails_to_load_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = device.capabilities(preset="h100")
    monkeypatch.setitem(
        sys.modules, "torchao", None
    )  # None in sys.modules: "import torchao" raises ImportError
    ok, why = fp8.torchao_status(h100)
    assert not ok and "pip install torchao" in why
    monkeypatch.setitem(sys.modules, "torchao", _BrokenTorchao("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", _BrokenTorchao("torchao.float8"))
    ok, why = fp8.torchao_status(h100)
    assert not ok and "does not load with torch" in why and "RuntimeError" in why


# ---- benchmark ------------------------------------------------------------------------------------


def test_benchmark_needs_fp8_hardware(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert bench.benchmark() == 1
    assert "Nothing measured" in capsys.readouterr().out


@pytest.fixture(scope="module")
def gemm_rows():
    try:
        return bench.measure_gemms(((32, 64, 32),), min_run_time=0.001, device="cpu", progress=False)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {err}")


def test_gemm_measurement_runs_anywhere_scaled_mm_does(gemm_rows) -> None:
    (record,) = gemm_rows
    assert record["flops"] == 2 * 32 * 64 * 32 and record["bf16_s"] > 0
    assert "fp8_tensorwise_speedup" in record and "M,K,N" in bench._gemm_line(record)
    table = bench.speedup_table(gemm_rows)
    assert list(table["M, K, N"]) == ["32, 64, 32"]


def test_results_use_the_course_result_format(gemm_rows, tmp_path) -> None:
    """A saved fp8 result is an ordinary mpcourse.bench.results record (topic fp8), read back by mpcourse.reference.records."""
    from mpcourse.bench import results

    record = bench.make_record(
        gemm_rows,
        [],
        note="training steps not measured (--quick)",
        seconds=1.0,
        command="mpcourse bench fp8 --quick",
    )
    path = results.save(record, tmp_path / "fp8-cpu.json")
    results.save(results.make_record("matmul", {"matmul": [{"x": 1}]}, command="c"), tmp_path / "other.json")
    (back,) = reference.records("fp8", tmp_path)  # topic fp8 only
    assert back == results.load(path) and back["topic"] == "fp8"
    assert "torchao" in back["environment"] and back["environment"]["device_name"]
    assert back["tables"]["run"][0]["torchao_note"].startswith("training steps")
    assert (
        bench.speedup_table(back)["speed-up tensorwise"].tolist()
        == bench.speedup_table(gemm_rows)["speed-up tensorwise"].tolist()
    )
    with pytest.raises(ValueError, match="stored fp8 record"):
        bench.speedup_table({"gemms": gemm_rows})


def test_stored_results_are_complete_records() -> None:
    """``bench.check_record`` on every stored fp8 record and on a synthetic one, which it must pass, and
    on damaged copies of the synthetic one, which it must reject.

    No fp8 record is stored yet (no GPU with fp8 units has run ``mpcourse bench fp8 --save``), so a
    loop over the stored ones alone would check nothing. The synthetic record is made here: an H100
    environment and GEMM rows shaped like a real run's, with invented rates (bf16 from 15 to 760
    TFLOP/s, fp8 from 10 to 1350, below the datasheet's dense peaks of 989.5 and 1979).
    """
    from mpcourse.bench import results

    folder = reference.folder("fp8")  # the folder the chapter reads, shipped with the package
    assert (folder / "README.md").is_file()
    stored = reference.records("fp8")  # each validated by mpcourse.bench.results.load
    assert len(stored) == len(list(folder.glob("*.json")))  # every file there is an fp8 record

    rates = {  # TFLOP/s per shape of bench.GEMM_SHAPES, smallest to largest (invented, see above)
        "bf16": (15, 80, 300, 550, 700, 750, 760),
        "fp8_tensorwise": (10, 60, 300, 750, 1150, 1300, 1350),
        "fp8_rowwise": (9, 55, 280, 700, 1100, 1250, 1300),
        "fp8_tensorwise_with_casts": (5, 30, 150, 450, 850, 1050, 1150),
    }
    gemms = []
    for i, (m, k, n) in enumerate(bench.GEMM_SHAPES):
        row = {"m": m, "k": k, "n": n, "flops": 2.0 * m * k * n}
        for case, per_shape in rates.items():
            row[f"{case}_s"] = row["flops"] / (per_shape[i] * 1e12)
            row[f"{case}_tflops"] = float(per_shape[i])
        for case in bench.GEMM_CASES[1:]:
            row[f"{case}_speedup"] = row["bf16_s"] / row[f"{case}_s"]
        gemms.append(row)
    h100 = {
        "kind": "cuda",
        "device_name": "NVIDIA H100 80GB HBM3",
        "device": "cuda: NVIDIA H100 80GB HBM3 (sm_90)",
    }
    synthetic = results.make_record(
        "fp8",
        {"gemms": gemms, "training_steps": [], "run": [{"torchao_note": "synthetic", "seconds": 1.0}]},
        command="mpcourse bench fp8",
        environment=h100,
    )
    for record in [synthetic, *stored]:
        checked = bench.check_record(record)
        assert any("gains more on the largest GEMM" in c for c in checked), checked
    assert any("NVIDIA H100 SXM" in c for c in bench.check_record(synthetic))

    def damaged(**changes) -> dict:
        record = {**synthetic, **{k: v for k, v in changes.items() if k in synthetic}}
        record["environment"] = {**synthetic["environment"], **changes.get("environment", {})}
        record["tables"] = {**synthetic["tables"], "gemms": changes.get("gemms", gemms)}
        return record

    no_bf16 = [dict(r) for r in gemms]
    del no_bf16[2]["bf16_s"]
    no_case = [dict(r) for r in gemms]
    del no_case[1]["fp8_rowwise_s"]
    inverted = [
        dict(
            r,
            fp8_tensorwise_speedup=1 / r["fp8_tensorwise_speedup"],
            fp8_tensorwise_s=r["fp8_tensorwise_s"] * r["fp8_tensorwise_speedup"] ** 2,
        )
        for r in gemms
    ]
    too_fast = [dict(r) for r in gemms]
    too_fast[-1]["fp8_tensorwise_s"] /= 2  # 2700 TFLOP/s
    too_fast[-1]["fp8_tensorwise_speedup"] *= 2
    wrong_ratio = [dict(r) for r in gemms]
    wrong_ratio[0]["fp8_rowwise_speedup"] *= 1.1
    for record, message in [
        (damaged(environment={"kind": "cpu"}), "fp8 records come from CUDA GPUs"),
        (damaged(environment={"device_name": "Tesla T4"}), "has no fp8 units"),
        (damaged(command="python my_script.py"), "made by"),
        (damaged(gemms=[]), "no GEMM rows"),
        (damaged(gemms=no_bf16), "no bf16 time"),
        (damaged(gemms=no_case), "needs a time or an error"),
        (damaged(gemms=inverted), "gained .* on the largest GEMM"),
        (damaged(gemms=too_fast), "above the datasheet's dense fp8 peak"),
        (damaged(gemms=wrong_ratio), "not the bf16 time over its time"),
    ]:
        with pytest.raises(AssertionError, match=message):
            bench.check_record(record)


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="no torch._scaled_mm")
@pytest.mark.parametrize(
    "config, tolerance", [("fp8_tensorwise", 1e-6), ("fp8_delayed", 1e-6), ("fp8_rowwise", 1e-2)]
)
def test_the_native_path_of_auto_gemm(config: str, tolerance: float) -> None:
    """The branch a GPU with fp8 units takes (torch._scaled_mm for every GEMM it accepts), run here on
    PyTorch's CPU emulation of _scaled_mm by pretending the device is native; rowwise outputs bf16."""
    if config == "fp8_rowwise" and not fp8.gemm.cpu_rowwise_scaled_mm():
        pytest.skip("this PyTorch's CPU torch._scaled_mm takes only per-tensor scales")
    torch.manual_seed(0)
    native = FP8Linear(64, 32, config=config, gemm="auto")
    emulated = FP8Linear(64, 32, config=config, gemm="emulated")
    emulated.load_state_dict(native.state_dict())
    native._native = True  # what _fp8_native() finds on sm_89+
    x1 = torch.randn(48, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    try:
        y1 = native(x1)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {err}")
    y2 = emulated(x2)
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    assert native.used_scaled_mm and not emulated.used_scaled_mm
    for a, b in ((y1, y2), (x1.grad, x2.grad), (native.weight.grad, emulated.weight.grad)):
        assert fp8.relative_error(a, b) < tolerance
