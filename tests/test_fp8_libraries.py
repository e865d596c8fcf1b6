"""The library table (mpcourse.fp8.libraries), te_status, and torchao's fp8 training on a CPU.

The table is data a page renders and a learner copies from, so every name in it is checked against
what it names: the course's configurations, the bibliography, and, where torchao is installed (it is
not in CI; ``PYTHONPATH`` with torchao 0.18 runs the rest), torchao's own classes.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types

import pytest
import torch
from conftest import ROOT
from torch import nn

from mpcourse import device, fp8, train
from mpcourse.fp8 import libraries
from mpcourse.fp8.libraries import LIBRARY_TABLE, Offer, get_offer, te_status

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(
    not HAS_TORCHAO, reason="torchao is not installed (the `frameworks` extra)"
)


def _caps(
    name: str, cc: tuple[int, int], *, preset: str | None = "test", rocm: bool = False
) -> device.Capabilities:
    return device.Capabilities(
        kind="cuda", name=name, compute_capability=cc, fp8_native=cc >= (8, 9), is_rocm=rocm, preset=preset
    )


def test_the_table_has_every_recipe_and_every_library() -> None:
    assert list(LIBRARY_TABLE) == [
        "tensorwise",
        "delayed",
        "rowwise",
        "rowwise_gw_hp",
        "blockwise",
        "mxfp8",
        "nvfp4",
    ]
    for recipe in LIBRARY_TABLE.values():
        assert set(recipe.offers) == set(libraries.LIBRARIES)
    full = libraries.table()
    assert len(full) == len(LIBRARY_TABLE) * len(libraries.LIBRARIES)
    assert set(full.columns) >= {"API", "status", "GPU", "version", "defaults", "notes", "sources"}


def test_every_source_is_in_the_bibliography() -> None:
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    known = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.MULTILINE))
    used = {key for r in LIBRARY_TABLE.values() for o in r.offers.values() for key in o.sources}
    assert used <= known, f"source keys missing from book/references.bib: {sorted(used - known)}"


def test_the_course_column_names_its_configurations(monkeypatch) -> None:
    named = {get_offer(key, "mpcourse").api.split('"')[1] for key in LIBRARY_TABLE}
    assert named == set(fp8.CONFIGS)  # one row per configuration of the course, and no other
    full = libraries.table().xs("mpcourse", level="library")
    assert set(full["status"]) == {"emulated"}
    monkeypatch.delitem(fp8.linear.CONFIGS, "nvfp4")  # an older package: the table says so, not fails
    assert libraries.table().loc[("NVFP4", "mpcourse"), "status"] == "not in this version"


def test_delayed_scaling_is_legacy_removed_from_torchao_kept_by_transformer_engine() -> None:
    ao, te = get_offer("delayed", "torchao"), get_offer("delayed", "Transformer Engine")
    assert ao.api is None and ao.status == "removed" and "0.10.0" in ao.notes
    assert te.status == "legacy" and "DelayedScaling" in te.api and "amax_history_len=1024" in te.defaults
    assert "legacy" in LIBRARY_TABLE["delayed"].name


def test_side_by_side_is_recipes_against_libraries_with_versions() -> None:
    frame = libraries.side_by_side()
    assert list(frame.index) == [r.name for r in LIBRARY_TABLE.values()]
    assert list(frame.columns) == ["torchao 0.18.0", "Transformer Engine 2.18.0", f"mpcourse {fp8_version()}"]
    assert frame.loc["MXFP8", "Transformer Engine 2.18.0"] == "stable, sm_100+; not sm_120+"
    assert frame.loc["rowwise scaling", "Transformer Engine 2.18.0"] == "absent"
    assert frame.loc["tensorwise delayed scaling (legacy)", "torchao 0.18.0"] == "removed"


def fp8_version() -> str:
    import mpcourse

    return mpcourse.__version__


def test_an_offer_refuses_inconsistent_data() -> None:
    with pytest.raises(ValueError, match="unknown status 'beta'"):
        Offer("x()", "beta", "1.0", ("torchao-float8",))
    with pytest.raises(ValueError, match="exactly when its status"):
        Offer(None, "stable", "1.0", ("torchao-float8",))
    with pytest.raises(ValueError, match="exactly when its status"):
        Offer("x()", "removed", "1.0", ("torchao-float8",))
    with pytest.raises(ValueError, match="at least one source"):
        Offer("x()", "stable", "1.0", ())
    with pytest.raises(ValueError, match="accepted: tensorwise, delayed"):
        get_offer("int8", "torchao")
    with pytest.raises(ValueError, match="accepted: torchao, Transformer Engine, mpcourse"):
        get_offer("mxfp8", "DeepSpeed")


@pytest.mark.parametrize(
    ("preset", "recipe", "ok", "phrase"),
    [
        ("cpu", "tensorwise", False, "needs an NVIDIA GPU"),
        ("t4", "delayed", False, "needs sm_89+"),
        ("a100", "tensorwise", False, "needs sm_89+"),
        ("l4", "tensorwise", True, "with CUDA 12.1+"),
        ("l4", "blockwise", False, "needs sm_90+"),
        ("h100", "tensorwise", True, "runs on"),
        ("h100", "Float8BlockScaling", True, "with CUDA 12.9+"),
        ("h100", "mxfp8", False, "needs sm_100+"),
        ("b200", "MXFP8BlockScaling", True, "runs on"),
        ("b200", "nvfp4", True, "runs on"),
    ],
)
def test_te_status_judges_a_preset_by_its_compute_capability(preset, recipe, ok, phrase) -> None:
    got, why = te_status(device.capabilities(preset=preset), recipe)
    assert got is ok and phrase in why, why
    if ok:
        assert "a preset" in why


def test_te_status_knows_mxfp8_is_not_offered_on_sm_120_and_not_on_amd() -> None:
    rtx = _caps("NVIDIA GeForce RTX 5090", (12, 0))
    assert te_status(rtx, "mxfp8") == (
        False,
        "Transformer Engine's MXFP8BlockScaling does not support sm_120 and newer in release 2.18.0; "
        f"this is {rtx.describe()}",
    )
    assert te_status(rtx, "nvfp4")[0]
    ok, why = te_status(_caps("AMD Instinct MI300X", (9, 4), rocm=True), "tensorwise")
    assert not ok and "NVIDIA GPU" in why


def test_te_status_refuses_a_recipe_transformer_engine_does_not_have() -> None:
    with pytest.raises(ValueError, match="no 'rowwise' recipe .*Float8BlockScaling's 1x128 blocks"):
        te_status(device.capabilities(preset="h100"), "rowwise")
    with pytest.raises(ValueError, match="unknown recipe 'fp8_e4m3'; Transformer Engine offers: tensorwise"):
        te_status(device.capabilities(preset="h100"), "fp8_e4m3")
    assert set(libraries.TE_RECIPES.values()) == {
        "Float8CurrentScaling",
        "DelayedScaling",
        "Float8BlockScaling",
        "MXFP8BlockScaling",
        "NVFP4BlockScaling",
    }


def test_te_status_on_this_machine_checks_cuda_and_the_installation(monkeypatch) -> None:
    """A machine (not a preset) with a capable GPU: then the CUDA version and the import decide."""
    here = _caps("NVIDIA H100 (this machine)", (9, 0), preset=None)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    ok, why = te_status(here, "blockwise")
    assert not ok and why.endswith("needs CUDA 12.9+ on this GPU; this torch is built for CUDA 12.4")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails with ImportError
    ok, why = te_status(here, "blockwise")
    assert not ok and "not installed" in why and libraries.TE_INSTALL in why

    class Broken(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise OSError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "transformer_engine", Broken("transformer_engine"))
    ok, why = te_status(here, "tensorwise")
    assert not ok and "does not load" in why and "OSError: libcudart.so.12" in why


def test_te_status_here_on_a_cpu_says_why_in_one_line() -> None:
    ok, why = te_status(device.capabilities(preset="cpu"))
    assert not ok and "\n" not in why and "sm_89+" in why


def test_torchao_status_counts_a_cpu_only_when_asked(monkeypatch) -> None:
    cpu = device.capabilities(preset="cpu")
    ok, why = fp8.torchao_status(cpu)
    assert not ok and "fp8 tensor cores" in why and "or a CPU" not in why
    monkeypatch.setitem(sys.modules, "torchao", None)
    ok, why = fp8.torchao_status(cpu, on_cpu=True)
    assert not ok and "not installed" in why
    ok, why = fp8.torchao_status(device.capabilities(preset="t4"), on_cpu=True)
    assert not ok and "or a CPU" in why
    with pytest.raises(ValueError, match="accepted: tensorwise, rowwise, rowwise_with_gw_hp"):
        fp8.torchao_status(cpu, recipe="delayed")


def test_torchao_training_recipes_include_the_high_precision_weight_gradient() -> None:
    names = {r.name for r in fp8.training_recipes()}
    assert {f"torchao_{name}" for name in fp8.TORCHAO_RECIPES} <= names
    assert train.get_recipe("torchao_rowwise_with_gw_hp").precision == "fp8"


def test_count_scaled_mm_counts_calls_and_restores_the_op() -> None:
    original = torch._scaled_mm
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0)
    with fp8.torchao.count_scaled_mm() as calls:
        out = torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    assert torch._scaled_mm is original
    assert calls == [(torch.float8_e4m3fn, torch.float8_e4m3fn, "cpu")]
    assert torch.equal(out, torch.full((16, 16), 16.0))


@needs_torchao
def test_the_table_names_what_torchao_defines() -> None:
    from torchao.float8.config import Float8LinearRecipeName, ScalingType
    from torchao.prototype.blockwise_fp8_training.linear import Float8BlockwiseLinearConfig  # noqa: F401
    from torchao.prototype.moe_training.config import MXFP8TrainingOpConfig, MXFP8TrainingRecipe
    from torchao.prototype.moe_training.nvfp4_training.nvfp4_training import NVFP4TrainingConfig  # noqa: F401

    assert {n.value for n in Float8LinearRecipeName} == set(fp8.TORCHAO_RECIPES)
    assert {s.value for s in ScalingType} == {"dynamic", "disabled"}  # no delayed, no static scaling
    assert MXFP8TrainingOpConfig.from_recipe(MXFP8TrainingRecipe.MXFP8_RCEIL).wgrad_with_hp is False
    for key in ("tensorwise", "rowwise", "rowwise_gw_hp"):
        name = get_offer(key, "torchao").api.split('from_recipe_name("')[1].split('"')[0]
        assert name in fp8.TORCHAO_RECIPES


@needs_torchao
@pytest.mark.parametrize(("recipe", "gemms"), [("tensorwise", 3), ("rowwise", 3), ("rowwise_with_gw_hp", 2)])
def test_torchao_trains_on_a_cpu_with_real_scaled_mm_calls(recipe, gemms) -> None:
    """torchao's code, unchanged, on a CPU: forward and backward of one converted layer call
    torch._scaled_mm once per fp8 GEMM (rowwise_with_gw_hp computes the weight gradient in bf16)."""
    ok, why = fp8.torchao_status(device.capabilities(preset="cpu"), recipe=recipe, on_cpu=True)
    assert ok, why
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    reference = nn.Linear(64, 64)  # a plain copy of the middle layer
    reference.load_state_dict(model[2].state_dict())
    fp8.torchao_convert(model, recipe, on_cpu=True)
    assert [type(m).__name__ for m in model if isinstance(m, nn.Linear)] == [
        "Linear",
        "Float8Linear",
        "Linear",
    ]
    x = torch.randn(16, 64)
    with fp8.torchao.count_scaled_mm() as calls:
        y = model[2](x)
        y.sum().backward()
    assert len(calls) == gemms and all(c[2] == "cpu" for c in calls)
    expected = reference(x)
    assert (y - expected).norm() / expected.norm() < 0.1  # fp8 operands: a few percent of error
    assert torch.isfinite(model[2].weight.grad).all()


def test_torchao_convert_refuses_a_cpu_unless_asked() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the refusal is for a CPU")
    with pytest.raises(fp8.UnsupportedFP8Error, match="fp8 tensor cores"):
        fp8.torchao_convert(nn.Sequential(nn.Linear(16, 16)))
