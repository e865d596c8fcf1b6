"""mpcourse.bench.datasheets: the table, its sources, and matching CUDA device names."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from mpcourse import device
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
    for name, caps in device.PRESETS.items():
        sheet = datasheets.for_device(caps)
        if caps.kind != "cuda":
            assert sheet is None
            continue
        assert sheet is not None, name
        assert sheet.compute_capability == caps.compute_capability, name
        # A precision has a datasheet peak exactly where the device has units for it.
        assert ("bf16" in sheet.dense_tflops) == caps.bf16_native, name
        assert ("tf32" in sheet.dense_tflops) == caps.tf32, name
        assert ("fp8" in sheet.dense_tflops) == caps.fp8_native, name


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
    assert {s.source for s in datasheets.DATASHEETS.values()} <= keys


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
        datasheets.Datasheet("x", "X", "X", {"int8": 1.0}, frozenset(), 1.0, 1.0, "src")
