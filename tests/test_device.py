"""mpcourse.device: presets, detection and the per-precision verdicts."""

from __future__ import annotations

import types

import pytest
import torch

from mpcourse import device, gpus


def verdicts(preset: str) -> dict[str, str]:
    return {p: s.status for p, s in device.precision_support(device.capabilities(preset=preset)).items()}


def test_cpu_preset_emulates_everything_narrow() -> None:
    assert verdicts("cpu") == {
        "fp32": "native",
        "tf32": "unavailable",
        "fp16": "emulated",
        "bf16": "emulated",
        "fp8": "emulated",
    }


def test_cpu_with_amx_runs_bf16_natively() -> None:
    assert verdicts("cpu_amx")["bf16"] == "native"


def test_t4_has_fp16_tensor_cores_but_only_emulated_bf16_and_no_fp8() -> None:
    caps = device.capabilities(preset="t4")
    assert caps.sm == "sm_75"
    assert verdicts("t4") == {
        "fp32": "native",
        "tf32": "unavailable",
        "fp16": "native",
        "bf16": "emulated",
        "fp8": "emulated",
    }
    # The verdict explains the trap rather than trusting is_bf16_supported().
    assert "is_bf16_supported" in device.precision_support(caps)["bf16"].reason


@pytest.mark.parametrize("preset", ["a100", "a100_40gb"])
def test_a100_has_bf16_and_tf32_but_no_fp8(preset: str) -> None:
    assert verdicts(preset) == {
        "fp32": "native",
        "tf32": "native",
        "fp16": "native",
        "bf16": "native",
        "fp8": "emulated",
    }


@pytest.mark.parametrize("preset, sm", [("l4", "sm_89"), ("h100", "sm_90"), ("h200", "sm_90")])
def test_ada_and_hopper_run_fp8_natively(preset: str, sm: str) -> None:
    assert device.capabilities(preset=preset).sm == sm
    assert set(verdicts(preset).values()) == {"native"}


def test_gpu_presets_are_the_rows_of_the_gpu_table() -> None:
    assert [k for k, c in device.PRESETS.items() if c.kind == "cuda"] == [g.preset for g in gpus.GPUS]
    for gpu in gpus.GPUS:
        caps = device.capabilities(preset=gpu.preset)
        assert (caps.name, caps.compute_capability, caps.memory_bytes) == (
            gpu.cuda_name,
            gpu.compute_capability,
            gpu.memory_gb * 1e9,
        )
        natives = {p for p, s in device.precision_support(caps).items() if s.status == "native"}
        assert natives == gpu.native, gpu.preset


def test_presets_are_case_insensitive() -> None:
    assert device.capabilities(preset="H100") == device.capabilities(preset="h100")


def test_unknown_preset_lists_the_accepted_names() -> None:
    with pytest.raises(ValueError) as err:
        device.capabilities(preset="p100")
    for name in ("a100", "b200", "cpu", "h100", "l4", "t4", "v100"):
        assert name in str(err.value)


def test_unknown_kind_lists_the_accepted_kinds() -> None:
    with pytest.raises(ValueError, match="'cpu', 'cuda', 'mps'"):
        device.capabilities(kind="tpu")


def test_preset_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_DEVICE_PRESET", "l4")
    assert device.capabilities().name == "NVIDIA L4"


def test_this_machine_is_detected_consistently() -> None:
    caps = device.capabilities()
    assert caps.preset is None
    assert caps.kind == "cuda" if torch.cuda.is_available() else caps.kind in {"cpu", "mps"}
    support = device.precision_support(caps)
    assert list(support) == list(device.PRECISIONS)
    assert support["fp32"].status == "native"
    if caps.kind == "cpu":
        assert support["bf16"].status == ("native" if caps.bf16_native else "emulated")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "model name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    )
    assert device._read_cpu_flags(str(cpuinfo)) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert device._read_cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_describe_names_the_preset() -> None:
    text = device.capabilities(preset="t4").describe()
    assert "Tesla T4" in text and "sm_75" in text and "preset 't4'" in text


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, name: str, cc: tuple[int, int], emulated_bf16: bool) -> None:
    """Make torch.cuda look like one GPU of compute capability `cc`, as torch reports it there."""
    props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1], total_memory=16 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.version, "hip", None)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return cc >= (8, 0) or (including_emulation and emulated_bf16)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_a_detected_t4_is_not_taken_for_a_bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a T4 torch.cuda.is_bf16_supported() is True because bf16 is emulated; detection must not trust it.
    _fake_cuda(monkeypatch, "Tesla T4", (7, 5), emulated_bf16=True)
    assert torch.cuda.is_bf16_supported()
    caps = device.capabilities()
    assert (caps.kind, caps.compute_capability) == ("cuda", (7, 5))
    assert (caps.fp16_native, caps.bf16_native, caps.tf32, caps.fp8_native) == (True, False, False, False)
    assert device.precision_support(caps)["bf16"].status == "emulated"


@pytest.mark.parametrize(
    "name, cc, natives",
    [
        ("NVIDIA A100", (8, 0), {"bf16", "tf32"}),
        ("NVIDIA L4", (8, 9), {"bf16", "tf32", "fp8"}),
        ("NVIDIA H100", (9, 0), {"bf16", "tf32", "fp8"}),
    ],
)
def test_detected_gpus_report_their_native_precisions(
    monkeypatch: pytest.MonkeyPatch, name, cc, natives
) -> None:
    _fake_cuda(monkeypatch, name, cc, emulated_bf16=False)
    support = device.precision_support(device.capabilities())
    assert {p for p, s in support.items() if s.status == "native"} == {"fp32", "fp16"} | natives
