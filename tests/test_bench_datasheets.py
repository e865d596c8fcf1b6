"""mpcourse.bench.datasheets: the table, its sources, and matching CUDA device names."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import ROOT

from mpcourse import device, gpus
from mpcourse.bench import datasheets

BIB = (ROOT / "book" / "references.bib").read_text()


@pytest.mark.parametrize(
    "name, key",
    [
        ("Tesla T4", "t4"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", None),  # a different, larger Ada card
        ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"),
        ("NVIDIA A100 80GB PCIe", None),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", None),  # lower clocks than the SXM module
        ("NVIDIA H100 NVL", None),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA H200 NVL", None),
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_device_names_match_the_right_datasheet(name: str, key: str | None) -> None:
    found = datasheets.lookup(name)
    assert (found.key if found else None) == key


def test_every_gpu_preset_has_its_datasheet_with_the_same_architecture() -> None:
    gpu_presets = 0
    for name, caps in device.PRESETS.items():
        sheet = datasheets.for_device(caps)
        if caps.kind != "cuda":
            assert sheet is None
            continue
        gpu_presets += 1
        assert sheet is not None, name
        assert sheet.preset == name and sheet.compute_capability == caps.compute_capability, name
        assert caps.memory_bytes == sheet.memory_gb * 1e9, name
        # A precision has a datasheet peak exactly where the device has units for it.
        assert ("fp16" in sheet.dense_tflops) == caps.fp16_native, name
        assert ("bf16" in sheet.dense_tflops) == caps.bf16_native, name
        assert ("tf32" in sheet.dense_tflops) == caps.tf32, name
        assert ("fp8" in sheet.dense_tflops) == caps.fp8_native, name
    assert gpu_presets == len(datasheets.DATASHEETS) == 8


def test_every_datasheet_has_its_gpu_preset() -> None:
    for key, sheet in datasheets.DATASHEETS.items():
        caps = device.capabilities(preset=sheet.preset)
        assert (caps.kind, caps.name, caps.compute_capability) == (
            "cuda",
            sheet.cuda_name,
            sheet.compute_capability,
        ), key
        assert datasheets.for_device(caps) is sheet, key


def test_presets_follow_the_compute_capability_rule_that_detection_uses() -> None:
    # The preset of each GPU and a detected GPU of the same compute capability get the same units.
    for sheet in datasheets.DATASHEETS.values():
        assert sheet.native == gpus.native_precisions(sheet.compute_capability), sheet.key
    assert gpus.native_precisions((7, 5)) == {"fp32", "fp16"}
    assert gpus.native_precisions((8, 0)) == {"fp32", "fp16", "bf16", "tf32"}
    assert gpus.native_precisions((8, 9)) == gpus.native_precisions((9, 0)) == set(gpus.PRECISIONS)


def test_a_row_that_contradicts_its_architecture_is_refused() -> None:
    t4 = datasheets.DATASHEETS["t4"]
    with pytest.raises(ValueError, match="an sm_75 GPU has units for"):
        gpus._check((dataclasses.replace(t4, printed_tflops=t4.printed_tflops | {"bf16": 65.0}),))
    with pytest.raises(ValueError, match="does not match its CUDA name"):
        gpus._check((dataclasses.replace(t4, cuda_name="NVIDIA T40"),))
    with pytest.raises(ValueError, match="two GPUs share a preset"):
        gpus._check((t4, dataclasses.replace(t4, key="t4-copy", cuda_name="Tesla T4 copy")))


def test_sparse_figures_are_halved_and_dense_ones_kept() -> None:
    h100 = datasheets.DATASHEETS["h100-sxm"]
    assert h100.printed_tflops["bf16"] == 1979.0 and h100.dense_tflops["bf16"] == 989.5
    assert h100.dense_tflops["fp32"] == 67.0  # CUDA cores: no sparsity involved
    a100 = datasheets.DATASHEETS["a100-sxm-80gb"]
    assert a100.dense_tflops["bf16"] == a100.printed_tflops["bf16"] == 312.0
    for sheet in datasheets.DATASHEETS.values():
        for p, dense in sheet.dense_tflops.items():
            assert dense == sheet.printed_tflops[p] / (2 if p in sheet.sparse else 1)
        # Tensor cores are never slower than the fp32 CUDA cores, and fp8 doubles fp16.
        assert all(v >= sheet.dense_tflops["fp32"] for v in sheet.dense_tflops.values())
        if "fp8" in sheet.dense_tflops:
            assert sheet.dense_tflops["fp8"] == pytest.approx(2 * sheet.dense_tflops["fp16"], rel=0.01)


def test_balance_point_is_peak_over_bandwidth() -> None:
    h200 = datasheets.DATASHEETS["h200-sxm"]
    assert h200.balance_point["bf16"] == pytest.approx(989.5e12 / 4800e9)


def test_every_source_is_in_the_bibliography() -> None:
    keys = set(re.findall(r"@\w+\{([^,]+),", BIB))
    assert {s.source for s in datasheets.DATASHEETS.values()} | {gpus.COMPUTE_CAPABILITY_SOURCE} <= keys


def test_table_lists_every_gpu() -> None:
    rows = datasheets.table()
    assert [r["gpu"] for r in rows] == [d.name for d in datasheets.DATASHEETS.values()]
    assert rows[0]["bf16 TFLOP/s"] is None  # T4: no bf16 units


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        datasheets.DATASHEETS["t4"].peak_tflops("fp4")
    with pytest.raises(TypeError, match="device_name"):
        datasheets.lookup(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precisions must be among"):
        datasheets.Datasheet("x", "x", "X", "X", "X", (8, 0), 1.0, 1.0, {"int8": 1.0}, frozenset(), "src")
    with pytest.raises(ValueError, match="sparse ones among those printed"):
        datasheets.Datasheet(
            "x", "x", "X", "X", "X", (8, 0), 1.0, 1.0, {"fp32": 1.0}, frozenset({"fp16"}), "src"
        )


def test_one_gpu_per_generation_names_its_architecture() -> None:
    """The cross-generation comparison keeps one row per compute capability and set of peaks, oldest first."""
    shown = gpus.one_per_generation()
    keys = [g.preset for g in shown]
    assert (
        keys[0] == "v100" and keys[-1] == "b200" and "h100" in keys and "h200" not in keys
    )  # H200: H100's compute
    assert [g.compute_capability for g in shown] == sorted(g.compute_capability for g in shown)
    assert all(
        g.architecture in gpus.ARCHITECTURES.values() for g in gpus.GPUS
    )  # every row's architecture is named
    assert next(g for g in gpus.GPUS if g.preset == "h100").architecture == "Hopper"
