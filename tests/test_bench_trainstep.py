"""mpcourse.bench.trainstep: recipes benchmarked through mpcourse.train, FLOPs, MFU, kernel tables."""

from __future__ import annotations

import math

import pytest
import torch

from mpcourse import data, device, models
from mpcourse.bench import flops, trainstep

CPU = device.capabilities(kind="cpu")


@pytest.fixture(scope="module")
def text():
    return data.load_text(source="local", block_size=16, max_chars=20000, verbose=False)


@pytest.fixture(scope="module")
def tables(text):
    return trainstep.recipe_table(
        text,
        ["fp32", "bf16", "pure_bf16"],
        width=32,
        depth=1,
        steps=3,
        batch_size=4,
        caps=CPU,
        progress=False,
    )


def test_one_row_per_recipe_with_throughput_and_memory(tables) -> None:
    frame, _ = tables
    assert frame["recipe"].tolist() == ["fp32", "bf16", "pure_bf16"]
    assert (frame["samples_per_s"] > 0).all()
    assert frame["tokens_per_s"].tolist() == pytest.approx((frame["samples_per_s"] * 16).tolist())
    memory = frame.set_index("recipe")["peak_memory_mb"]
    assert memory["pure_bf16"] < memory["bf16"] <= memory["fp32"]  # exact storage accounting on a CPU
    assert frame["mfu"].isna().all()  # a CPU has no datasheet peak
    assert frame.set_index("recipe").loc["bf16", "status"] in ("native", "emulated")


def test_kernel_tables_show_the_dtype_of_the_products(tables) -> None:
    _, kernels = tables
    products = (
        kernels[kernels["op"].isin(["aten::mm", "aten::addmm"])].groupby("recipe")["dtypes"].agg(" ".join)
    )
    assert "bf16" in products["bf16"] and "bf16" in products["pure_bf16"]
    assert "bf16" not in products["fp32"]


def test_model_flops_agree_with_six_nt(text) -> None:
    model = models.for_data(text, width=32, depth=1)
    count = trainstep.model_flops(model, text, batch_size=4)
    assert count["tokens"] == 4 * 16
    assert 0.5 < count["counted"] / count["six_nt"] < 2
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind


def test_recomputation_adds_the_blocks_forward_to_the_hardware_flops(text) -> None:
    model = models.for_data(text, width=32, depth=2)
    plain = trainstep.model_flops(model, text, batch_size=4, countable_attention=True)
    redone = trainstep.model_flops(model, text, batch_size=4, recompute=True, countable_attention=True)
    # A forward is a third of forward + backward: recomputing the blocks (not the head) adds under a third.
    assert 1 < redone["counted"] / plain["counted"] < 4 / 3
    assert redone["six_nt"] == plain["six_nt"]  # the model FLOPs do not change
    assert isinstance(model.blocks, torch.nn.Sequential)  # the model is left as it was
    assert all(p.grad is None for p in model.parameters())


def test_counted_attention_matches_the_palm_formula(text) -> None:
    model = models.for_data(text, width=32, depth=2)
    fused = trainstep.model_flops(model, text, batch_size=4)
    reference = trainstep.model_flops(model, text, batch_size=4, countable_attention=True)
    extra = flops.attention_flops(layers=2, width=32, seq_len=16, tokens=reference["tokens"])
    if next(model.parameters()).device.type == "cpu":
        assert reference["counted"] - fused["counted"] == extra  # the fused CPU kernel counts zero


def test_recompute_needs_blocks(text) -> None:
    with pytest.raises(ValueError, match="blocks"):
        trainstep.model_flops(torch.nn.Linear(4, 4), text, batch_size=2, recompute=True)


#: The CPU flags mpcourse is shown, to pretend to be a CPU without bf16 units and one with them,
#: whichever CPU runs the tests (the arithmetic is the same; only the verdict "native" differs).
CPU_FLAGS = {"avx2": device.PRESETS["cpu"].cpu_flags, "amx": device.PRESETS["cpu_amx"].cpu_flags}


@pytest.mark.parametrize("cpu", sorted(CPU_FLAGS))
def test_mfu_uses_the_datasheet_peak_of_the_recipe_precision(cpu: str, monkeypatch, text) -> None:
    # Pretend this CPU had the flags of `cpu`, and were an H100 for the peak lookup only (the run stays on the CPU).
    monkeypatch.setattr(device, "_read_cpu_flags", lambda cpuinfo="/proc/cpuinfo": CPU_FLAGS[cpu])
    pretended = device.capabilities(kind="cpu")
    assert pretended.bf16_native == (cpu == "amx")
    h100 = device.capabilities(preset="h100")
    monkeypatch.setattr(
        trainstep.datasheets, "for_device", lambda caps: trainstep.datasheets.lookup(h100.name)
    )
    frame, _ = trainstep.recipe_table(
        text, ["fp32", "bf16"], width=32, depth=1, steps=2, batch_size=4, caps=pretended, progress=False
    )
    row = frame.set_index("recipe")
    assert row.loc["fp32", "status"] == "native" and row.loc["fp32", "peak_tflops"] == 67.0
    assert row.loc["bf16", "status"] == ("native" if cpu == "amx" else "emulated")
    if cpu == "amx":
        assert row.loc["bf16", "peak_tflops"] == 989.5
    else:  # no peak describes emulated bf16: no MFU rather than a wrong one
        assert math.isnan(row.loc["bf16", "peak_tflops"]) and math.isnan(row.loc["bf16", "mfu"])
    for r in row[row["status"] == "native"].itertuples():
        assert r.mfu == pytest.approx(r.flops_per_step / (r.step_ms / 1e3) / (r.peak_tflops * 1e12))
        assert math.isfinite(r.mfu)


def test_default_recipes_leave_out_the_failing_one() -> None:
    assert "pure_fp16" not in trainstep.default_recipes()
    assert {"fp32", "tf32", "fp16", "bf16", "pure_bf16"} <= set(trainstep.default_recipes())


def test_bad_input_is_named(text) -> None:
    with pytest.raises(ValueError, match="unknown recipe 'fp4'"):
        trainstep.recipe_table(text, ["fp4"], width=32, depth=1, steps=1, batch_size=2, caps=CPU)
    with pytest.raises(ValueError, match="another machine"):
        trainstep.recipe_table(
            text, ["fp32"], width=32, depth=1, steps=1, batch_size=2, caps=device.capabilities(preset="t4")
        )


def test_default_recipes_include_fp8_without_importing_quant_first() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    code = "from mpcourse.bench import trainstep; print(' '.join(trainstep.default_recipes()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    assert {"fp8_tensorwise", "fp8_delayed", "fp8_rowwise", "fp8_blockwise", "mxfp8"} <= set(out)
    assert {"torchao_tensorwise", "torchao_rowwise"} <= set(out)


def test_fp8_rows_say_how_much_of_the_model_is_fp8_and_torchao_is_skipped_with_the_reason(text) -> None:
    # Every kernel (profile_top=None), not the ten longest: which kernels those are depends on the CPU (on one
    # without bf16 units the emulated bf16 products outlast the fp8 casts), and the casts are what is checked.
    frame, kernels = trainstep.recipe_table(
        text,
        ["fp8_tensorwise", "fp8_blockwise", "torchao_tensorwise"],
        width=32,
        depth=1,
        steps=2,
        batch_size=4,
        caps=CPU,
        progress=False,
        profile_top=None,
    )
    row = frame.set_index("recipe")
    assert (
        row.loc["fp8_tensorwise", "status"] == "emulated" and row.loc["fp8_tensorwise", "samples_per_s"] > 0
    )
    assert (
        row.loc["fp8_tensorwise", "fp8_layers"] == "3/5"
        and "first and last kept" in row.loc["fp8_tensorwise", "note"]
    )
    # Width 32: no inner layer is a multiple of 128, so the blockwise recipe has no fp8 layer, and says so.
    assert (
        row.loc["fp8_blockwise", "fp8_layers"] == "0/5" and "runs as bf16" in row.loc["fp8_blockwise", "note"]
    )
    assert row.loc["torchao_tensorwise", "status"] == "skipped"
    assert "fp8 tensor cores" in row.loc["torchao_tensorwise", "note"]
    assert math.isnan(row.loc["torchao_tensorwise", "samples_per_s"])
    assert set(kernels["recipe"]) == {"fp8_tensorwise", "fp8_blockwise"}
    assert "e4m3" in " ".join(kernels.loc[kernels["recipe"] == "fp8_tensorwise", "dtypes"])


def test_torchao_rows_count_their_fp8_layers_as_torchao_converts_them() -> None:
    """torchao's recipes report fp8_layers too (the benchmarking chapter asserts every fp8 row does)."""
    from torch import nn

    from mpcourse import fp8

    def model() -> nn.Module:
        return nn.Sequential(
            nn.Linear(32, 64), nn.Linear(64, 24), nn.Linear(24, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        )

    table = fp8.torchao_plan(model())
    assert list(table["fp8"]) == [False, False, False, True, False]
    assert "not divisible by 16" in table.loc[1, "reason"] and "first" in table.loc[0, "reason"]
    layers, why = trainstep.fp8_layers("torchao_tensorwise", model)
    assert layers == "1/5" and "2 with features not divisible by 16" in why
    assert trainstep.fp8_layers("bf16", model) is None
