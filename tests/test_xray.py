"""mpcourse.xray: what autocast does per op, measured, and checked against PyTorch's documented lists."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse import data, models, xray

LOW = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def text():
    return data.load_text(source="local", block_size=16, max_chars=5000, verbose=False)


class Probe(nn.Module):
    """Calls listed and unlisted ops with inputs that tell autocast's decision apart."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.lin(x)  # lower list: fp32 in, low out
        a = torch.matmul(x, x.T)  # lower
        b = torch.bmm(x[None], x.T[None])  # lower
        c = self.prelu(x)  # lower (CPU and CUDA)
        d = torch.cat([low, x])  # widest: mixed -> fp32
        e = torch.stack([low, low])  # widest: all low -> low
        f = F.mse_loss(low, low * 0.5)  # fp32 list
        g = F.binary_cross_entropy(torch.sigmoid(low.float()), torch.rand_like(x))  # fp32 on CPU
        h = F.softmax(low, dim=-1)  # unlisted on CPU: stays low
        i = F.log_softmax(low, dim=-1)  # unlisted on CPU
        j = torch.prod(low, dim=-1)  # fp32 list on CPU
        k = F.gelu(low) + F.relu(low)  # unlisted
        return a.sum() + b.sum() + c.sum() + d.sum() + e.sum() + f + g + h.sum() + i.sum() + j.sum() + k.sum()


def _text_loss(text):
    def loss(out):
        targets = torch.zeros(out.shape[:2], dtype=torch.long, device=out.device)
        return F.cross_entropy(out.reshape(-1, text.num_classes), targets.reshape(-1))

    return loss


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("which", ["mlp", "cnn", "transformer", "probe"])
def test_xray_matches_the_documented_cpu_lists(which, dtype, text) -> None:
    torch.manual_seed(0)
    if which == "transformer":
        model = models.for_data(text, width=32, depth=1)
        inputs = (text.sample(2, torch.Generator().manual_seed(0))[0],)
        loss_fn = _text_loss(text)
    elif which == "probe":
        model, inputs, loss_fn = Probe(), (torch.randn(4, 8),), None
    else:
        model = models.MLP(64, 10, 32) if which == "mlp" else models.TinyCNN(1, 10, 8)
        inputs = (torch.randn(4, 1, 8, 8),)
        loss_fn = lambda out: F.cross_entropy(out, torch.arange(4))
    result = xray.xray(model, *inputs, dtype=dtype, loss_fn=loss_fn)
    mismatches = xray.check_against_docs(result)
    assert mismatches.empty, mismatches.to_string()
    assert (result.table["documented"] == "lower").any()
    if loss_fn is not None:
        assert set(result.gradient_dtypes.values()) == {"float32"}, "gradients of fp32 parameters are fp32"
    assert set(result.parameter_dtypes.values()) == {"float32"}


def test_probe_effects_are_what_the_cpu_docs_say() -> None:
    torch.manual_seed(0)
    table = xray.xray(Probe(), torch.randn(4, 8)).table
    effect = dict(zip(table["op"], table["effect"]))
    output = dict(zip(table["op"], table["output"]))
    assert effect["linear"] == effect["matmul"] == effect["bmm"] == "to low precision (autocast)"
    assert effect["prelu"] == "to low precision (autocast)"
    assert effect["mse_loss"] == effect["prod"] == "to fp32 (autocast)"
    assert effect["cat"] == "widest input type" and output["cat"] == "float32"
    assert output["stack"] == "bfloat16"
    assert output["softmax"] == output["log_softmax"] == "bfloat16"  # not on the CPU fp32 list
    assert effect["softmax"] == "inputs' type"


def test_without_autocast_nothing_is_cast(text) -> None:
    model = models.for_data(text, width=32, depth=1)
    result = xray.xray(model, text.sample(2, torch.Generator().manual_seed(0))[0], enabled=False)
    assert set(result.table["effect"]) <= {"inputs' type"}
    assert set(result.table["output"]) == {"float32"}


def test_ops_are_attributed_to_modules(text) -> None:
    model = models.for_data(text, width=32, depth=1)
    table = xray.xray(model, text.sample(2, torch.Generator().manual_seed(0))[0]).table
    modules = dict(zip(table["module"], table["op"]))
    assert modules["blocks.0.qkv"] == "linear" and modules["tokens"] == "embedding"
    assert modules["blocks.0.norm1"] == "layer_norm"
    with_shapes = xray.xray(
        model, text.sample(2, torch.Generator().manual_seed(0))[0], include_shape_ops=True
    ).table
    assert (
        with_shapes["op"].isin(["view", "transpose"]).any()
        and not table["op"].isin(["view", "transpose"]).any()
    )


def test_rerunning_ops_does_not_change_random_state() -> None:
    drop = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    x = torch.randn(16, 8)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = drop(x)
    torch.manual_seed(1)
    with xray.recording(drop), torch.autocast("cpu", dtype=torch.bfloat16):
        recorded = drop(x)
    assert torch.equal(plain, recorded)


def test_effect_of() -> None:
    f32, bf = torch.float32, torch.bfloat16
    assert xray.effect_of([f32, f32], bf, None) == "to low precision (autocast)"
    assert xray.effect_of([f32, f32], bf, f32) == "to low precision (autocast)"
    assert xray.effect_of([bf], f32, bf) == "to fp32 (autocast)"
    assert xray.effect_of([bf, f32], f32, f32) == "widest input type"
    assert xray.effect_of([bf], bf, bf) == "inputs' type"


def test_explicit_casts_are_marked_and_not_held_against_the_docs() -> None:
    with xray.recording() as rec, torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(4, 4)
        x.bfloat16().float()
        torch.softmax(x.bfloat16(), dim=-1, dtype=torch.float32)
    table = rec.frame()
    assert set(table.loc[table["op"].isin(["bfloat16", "float", "softmax"]), "effect"]) == {"explicit dtype"}


def test_documented_lists_hold_the_differences_between_devices() -> None:
    for op in ("softmax", "layer_norm", "log_softmax", "sum", "exp"):
        assert (
            xray.documented_category(op, "cuda") == "fp32"
            and xray.documented_category(op, "cpu") == "unlisted"
        )
    assert xray.documented_category("binary_cross_entropy", "cpu") == "fp32"
    assert xray.documented_category("binary_cross_entropy", "cuda") == "banned"  # it raises there
    assert xray.documented_category("cross_entropy", "cpu") == "fp32"  # via the alias cross_entropy_loss
    assert (
        xray.documented_category("cat", "cpu") == "widest"
        and xray.documented_category("cat", "cuda") == "unlisted"
    )
    with pytest.raises(ValueError, match="accepted: cuda, cpu"):
        xray.documented_category("linear", "tpu")


def test_kernels_show_the_casts_and_the_backward_dtypes() -> None:
    torch.manual_seed(0)
    model = models.MLP(64, 10, 32)
    ks = xray.kernels(
        model, torch.randn(4, 1, 8, 8), loss_fn=lambda out: F.cross_entropy(out, torch.arange(4))
    )
    forward, backward = ks[ks["phase"] == "forward"], ks[ks["phase"] == "backward"]
    casts = forward[(forward["kernel"] == "_to_copy") & (forward["output"] == "bfloat16")]
    assert len(casts) == 3 * 2 + 1  # each linear's weight and bias, and the input of the first layer
    assert set(forward.loc[forward["kernel"] == "addmm", "output"]) == {"bfloat16"}
    assert set(backward.loc[backward["kernel"] == "mm", "output"]) == {"bfloat16"}
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}


def test_figure_and_summary(text) -> None:
    model = models.for_data(text, width=32, depth=1)
    result = xray.xray(model, text.sample(2, torch.Generator().manual_seed(0))[0], loss_fn=_text_loss(text))
    fig = result.figure()
    assert {t.name for t in fig.data} == {"output float32", "output bfloat16"}
    summary = result.summary().set_index("op")
    assert (
        summary.loc["linear", "outputs"] == "bfloat16"
        and summary.loc["cross_entropy", "outputs"] == "float32"
    )


def test_bad_dtype_is_explained() -> None:
    with pytest.raises(ValueError, match="torch.bfloat16 or torch.float16"):
        xray.xray(nn.Linear(2, 2), torch.randn(1, 2), dtype=torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", LOW)
def test_xray_matches_the_documented_cuda_lists(dtype, text) -> None:  # pragma: no cover - GPU only
    torch.manual_seed(0)
    model = models.for_data(text, width=32, depth=1).cuda()
    tokens = text.sample(2, torch.Generator().manual_seed(0))[0].cuda()
    result = xray.xray(model, tokens, dtype=dtype, loss_fn=_text_loss(text))
    assert xray.check_against_docs(result).empty
    assert set(result.table.loc[result.table["op"] == "layer_norm", "output"]) == {"float32"}


def test_kernel_recording_sees_the_weight_cast_cache() -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(8, 8), torch.randn(2, 8)
    counts = {}
    for cache in (True, False):
        with xray.kernel_recording(layer) as rows:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
                for _ in range(3):
                    layer(x)
        counts[cache] = xray.count_casts(rows, torch.bfloat16)
        assert {r["module"] for r in rows} == {"Linear"}
    assert counts == {True: 2 + 3, False: 3 * 3}  # weight and bias once (cached), the input every call
    assert xray.count_casts(rows, "float32") == 0 and xray.count_casts(rows) == 9


def test_count_casts_sees_casts_under_inference_mode() -> None:
    # Under inference_mode the dispatcher sees `to` and `linear`, not `_to_copy` and `addmm`.
    layer, x = nn.Linear(8, 8), torch.randn(2, 8)
    xb = x.bfloat16()
    with torch.inference_mode(), xray.kernel_recording() as rows:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)  # input, weight and bias cast
            layer(xb)  # nothing cached under inference_mode: weight and bias cast again
    assert xray.count_casts(rows, torch.bfloat16) == 3 + 2
    assert xray.count_casts([{"kernel": "to", "inputs": "bfloat16", "output": "bfloat16"}]) == 0


def test_kernel_recording_sees_the_recomputation_of_a_checkpoint() -> None:
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
    with xray.kernel_recording() as rows:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = checkpoint(net, torch.randn(2, 8), use_reentrant=False)
        forward_rows = len(rows)
        out.float().sum().backward()
    recomputed = [r["output"] for r in rows[forward_rows:] if r["kernel"] in ("addmm", "gelu")]
    assert recomputed and set(recomputed) == {"bfloat16"}


def test_count_casts_rejects_a_bad_dtype() -> None:
    with pytest.raises(TypeError, match="torch dtype or its name"):
        xray.count_casts([], to=16)
