"""Checks for the exercises of chapter ``autocast``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import xray
from . import call, fail, register

SLUG = "autocast"


def _calls() -> dict[str, Callable[[], torch.Tensor]]:
    """The calls whose output dtype the learner predicts, each run under CPU bf16 autocast."""
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(4, 8, generator=gen)
    w32 = torch.randn(8, 8, generator=gen)
    xb = x32.bfloat16()
    ids = torch.tensor([0, 3, 5])
    return {
        "linear(fp32 input, fp32 weight)": lambda: F.linear(x32, w32),
        "matmul(bf16, bf16)": lambda: xb @ xb.T,
        "relu(bf16)": lambda: F.relu(xb),
        "softmax(bf16)": lambda: F.softmax(xb, dim=-1),
        "softmax(fp32)": lambda: F.softmax(x32, dim=-1),
        "layer_norm(fp32)": lambda: F.layer_norm(x32, (8,)),
        "add(bf16, fp32)": lambda: xb + x32,
        "cat([bf16, fp32])": lambda: torch.cat([xb, x32]),
        "cross_entropy(bf16 logits)": lambda: F.cross_entropy(xb, torch.tensor([0, 1, 2, 3])),
        "mse_loss(bf16, bf16)": lambda: F.mse_loss(xb, xb * 2),
        "embedding(int ids, fp32 table)": lambda: F.embedding(ids, w32),
    }


#: Recognised wrong predictions: (call, predicted dtype) -> what the learner missed.
_PREDICTION_MISTAKES: dict[tuple[str, torch.dtype], str] = {
    (
        "linear(fp32 input, fp32 weight)",
        torch.float32,
    ): "linear layers are the first thing autocast casts down: their inputs and weights are cast to bf16.",
    (
        "softmax(bf16)",
        torch.float32,
    ): "that is CUDA's list. On CPU softmax is not on the fp32 list, so it runs "
    "in the dtype its input arrives in.",
    (
        "layer_norm(fp32)",
        torch.bfloat16,
    ): "layer_norm is not on the CPU bf16 list (on CUDA it is even on the fp32 "
    "list): it runs in its input's dtype, here fp32.",
    (
        "add(bf16, fp32)",
        torch.bfloat16,
    ): "add is not an autocast op at all; PyTorch's ordinary type promotion "
    "makes bf16 + fp32 an fp32 result.",
    ("cross_entropy(bf16 logits)", torch.bfloat16): "losses are on the fp32 list on both CPU and CUDA.",
    ("mse_loss(bf16, bf16)", torch.bfloat16): "losses are on the fp32 list on both CPU and CUDA.",
    (
        "embedding(int ids, fp32 table)",
        torch.bfloat16,
    ): "embedding is not on any list: it returns rows of its fp32 table unchanged.",
    ("relu(bf16)", torch.float32): "unlisted ops run in the dtype of their inputs; relu's input is bf16.",
    (
        "cat([bf16, fp32])",
        torch.bfloat16,
    ): "cat takes the widest of its input types: one fp32 input makes it fp32.",
}


def measured_dtypes() -> dict[str, torch.dtype]:
    """The output dtype of each call of the predict exercise, measured under CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return {name: fn().dtype for name, fn in _calls().items()}


@register(f"{SLUG}-predict")
def check_predict(predict_cpu_bf16: Any) -> None:
    """``predict_cpu_bf16()`` -> dict from each call's name to the torch dtype it returns under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    label = f"{SLUG}-predict"
    hint = (
        "three rules: ops on the low-precision list (matmuls, linear, conv) are cast to bf16; ops on the "
        "fp32 list (on CPU: losses, some linear algebra) run in fp32; cat/stack take the widest input; "
        "every other op runs in the dtype its inputs arrive in, with PyTorch's usual type promotion."
    )
    got = call(label, predict_cpu_bf16)
    want = measured_dtypes()
    if not isinstance(got, dict):
        fail(label, f"you returned {type(got).__name__}; expected a dict from call names to dtypes.", hint)
    missing = [k for k in want if k not in got]
    if missing:
        fail(
            label,
            f"your dict has no entry for {missing[0]!r} ({len(missing)} missing).",
            "predict every call listed.",
        )
    bad_type = [k for k in want if not isinstance(got[k], torch.dtype)]
    if bad_type:
        fail(
            label,
            f"the prediction for {bad_type[0]!r} is {got[bad_type[0]]!r}, not a torch dtype.",
            "use torch.float32 or torch.bfloat16.",
        )
    wrong = [k for k in want if got[k] != want[k]]
    if wrong:
        first = wrong[0]
        known = _PREDICTION_MISTAKES.get((first, got[first]))
        fail(
            label,
            f"{len(wrong)} of {len(want)} predictions are wrong, for example {first!r}"
            + (f": {known}" if known else "."),
            hint,
        )


def _bce_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.double(), targets.double())


@register(f"{SLUG}-safe-bce")
def check_safe_bce(binary_loss: Any) -> None:
    """``binary_loss(logits, targets)``: the mean binary cross-entropy of raw scores, safe under autocast."""
    label = f"{SLUG}-safe-bce"
    hint = (
        "do not apply a sigmoid and then take logs: for large scores the sigmoid rounds to exactly 0 or 1. "
        "Use the fused form that works on the raw scores (the logits)."
    )
    gen = torch.Generator().manual_seed(5)
    cases = {
        "moderate scores": torch.randn(64, generator=gen) * 2,
        "confident scores, some wrong (|score| up to 30)": torch.linspace(-30, 30, 64),
    }
    targets = (torch.rand(64, generator=gen) > 0.5).float()
    for case, scores in cases.items():
        for dtype in (torch.bfloat16, torch.float16):
            logits = scores.to(dtype).requires_grad_()
            with torch.autocast("cpu", dtype=dtype):
                loss = call(label, binary_loss, logits, targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                fail(
                    label,
                    f"for {case} you returned {type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                    + "; expected the mean loss, one number.",
                    "average over the batch.",
                )
            want = _bce_reference(logits.detach(), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                fail(label, f"for {case} under {dtype} autocast the loss is {value}.", hint)
            if not math.isclose(value, float(want), rel_tol=2e-2):
                total = float(want) * len(targets)
                if math.isclose(value, total, rel_tol=2e-2):
                    fail(
                        label,
                        f"for {case} you return the sum over the batch, not the mean.",
                        "take the mean.",
                    )
                fail(
                    label,
                    f"for {case} under {dtype} autocast the loss is {value:.4g}, expected {float(want):.4g}.",
                    hint,
                )
            grad = torch.autograd.grad(loss, logits)[0].double()
            want_grad = (torch.sigmoid(logits.detach().double()) - targets.double()) / len(targets)
            if not torch.allclose(grad, want_grad, rtol=5e-2, atol=1e-4):
                fail(
                    label,
                    f"for {case} under {dtype} autocast the loss has the right value but wrong gradients.",
                    hint,
                )


def _probe_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@register(f"{SLUG}-inference")
def check_inference(predict_probabilities: Any) -> None:
    """``predict_probabilities(model, x, device_type, dtype)``: class probabilities in fp32, computed
    under autocast without recording gradients."""
    label = f"{SLUG}-inference"
    hint = (
        "wrap the forward pass in torch.no_grad() (or torch.inference_mode()) and torch.autocast(device_type, "
        "dtype=dtype); convert the logits to fp32 before the softmax."
    )
    for dtype in (torch.bfloat16, torch.float16):
        model = _probe_model()
        seen: list[torch.dtype] = []
        model[0].register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.dtype))
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
        probs = call(label, predict_probabilities, model, x, "cpu", dtype)
        case = f"dtype={dtype}"
        if not isinstance(probs, torch.Tensor) or probs.shape != (5, 4):
            fail(
                label,
                f"for {case} you returned {type(probs).__name__}"
                + (f" of shape {tuple(probs.shape)}" if isinstance(probs, torch.Tensor) else "")
                + "; expected a (5, 4) tensor of probabilities.",
                hint,
            )
        if seen[-1:] != [dtype]:
            fail(
                label,
                f"for {case} the first linear layer produced {seen[-1:]}: the model did not run under autocast.",
                hint,
            )
        if probs.requires_grad:
            fail(
                label,
                f"for {case} the result requires grad: autograd recorded the forward pass.",
                "inference needs no graph; torch.no_grad() saves the memory autograd would keep.",
            )
        if probs.dtype != torch.float32:
            fail(
                label,
                f"for {case} the probabilities are {probs.dtype}.",
                "convert the logits to fp32 before the softmax.",
            )
        if not torch.allclose(probs.sum(-1), torch.ones(5), atol=1e-4):
            fail(label, f"for {case} the rows do not sum to 1: these are not probabilities.", hint)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            want = torch.softmax(model(x).float(), dim=-1)
        if not torch.allclose(probs, want, atol=1e-6):
            fail(label, f"for {case} the probabilities differ from a softmax of the autocast logits.", hint)


@register(f"{SLUG}-custom-fwd")
def check_custom_fwd(make_sum_of_squares: Any) -> None:
    """``make_sum_of_squares()`` -> the ``apply`` of a ``torch.autograd.Function`` computing
    ``(x * x).sum(-1)`` that always runs in fp32 under CPU autocast."""
    label = f"{SLUG}-custom-fwd"
    hint = (
        "decorate forward with @torch.amp.custom_fwd(device_type='cpu', cast_inputs=torch.float32) and "
        "backward with @torch.amp.custom_bwd(device_type='cpu'); backward returns 2 * x * grad (with grad "
        "broadcast over the last dimension)."
    )
    fn = call(label, make_sum_of_squares)
    owner = getattr(fn, "__self__", None)
    if not (isinstance(owner, type) and issubclass(owner, torch.autograd.Function)):
        fail(
            label,
            f"you returned {fn!r}; expected the apply method of a torch.autograd.Function subclass.",
            "return YourFunction.apply.",
        )
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(3, 4096, generator=gen) * 30
    for dtype, autocast in ((torch.bfloat16, True), (torch.float16, True), (torch.float32, False)):
        x = base.to(dtype).requires_grad_()
        case = f"a {dtype} input" + (f" under {dtype} autocast" if autocast else " without autocast")
        with torch.autocast("cpu", dtype=dtype if autocast else torch.bfloat16, enabled=autocast):
            try:
                out = fn(x)
            except Exception as exc:  # noqa: BLE001 - report the learner's error as a failure
                fail(label, f"for {case} your function raised {type(exc).__name__}: {exc}", hint)
        want = (x.detach().double() ** 2).sum(-1)
        if out.dtype != torch.float32:
            fail(
                label,
                f"for {case} the output is {out.dtype}: the forward pass did not run in fp32.",
                "cast_inputs=torch.float32 makes autocast convert the inputs and run forward with autocast off.",
            )
        if not torch.allclose(out.double(), want, rtol=1e-5):
            fail(label, f"for {case} the forward result is wrong.", hint)
        out.sum().backward()
        if x.grad is None or x.grad.dtype != dtype:
            fail(
                label,
                f"for {case} the gradient is {None if x.grad is None else x.grad.dtype}, expected {dtype}.",
                hint,
            )
        if not torch.allclose(x.grad.double(), 2 * x.detach().double(), rtol=1e-2):
            fail(
                label,
                f"for {case} the gradient is wrong.",
                "the derivative of sum(x_i^2) with respect to x_i is 2 x_i.",
            )


# ---- autocast-xray-predict -----------------------------------------------------------------------


class XRayProbe(nn.Module):
    """A tiny classifier over token ids in which each rule of CPU autocast shows at least once.

    The residual stream is fp32 (embedding, then an fp32 + bf16 add), so the same op, softmax,
    meets an fp32 input once and a bf16 input once; the matmuls take fp32 and mixed inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        x = torch.relu(self.mlp(self.norm(h)))
        h = h + x
        gate = torch.softmax(h, dim=-1)
        scores = torch.softmax(h @ h.transpose(1, 2), dim=-1)
        h = scores @ (h * gate)
        return self.head(h.mean(dim=1))


def xray_probe() -> xray.XRay:
    """The x-ray of :class:`XRayProbe` and its cross-entropy loss under CPU bf16 autocast."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = XRayProbe()
    gen = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, 32, (2, 5), generator=gen), torch.tensor([0, 3])
    return xray.xray(
        model,
        ids,
        dtype=torch.bfloat16,
        device_type="cpu",
        loss_fn=lambda logits: F.cross_entropy(logits, targets),
    )


def xray_probe_rows() -> list[str]:
    """The ops the x-ray records for :class:`XRayProbe`, in order, as ``"module: op"`` (no dtypes)."""
    table = xray_probe().table
    return [f"{module}: {op}" for module, op in zip(table["module"], table["op"])]


def _xray_mistake(row: Any, predicted: torch.dtype) -> str:
    """Why a prediction for one x-ray row is wrong, from what the x-ray measured for that row."""
    op, effect, inputs = row["op"], row["effect"], row["inputs"]
    if effect == "to low precision (autocast)":
        return (
            f"{op} is on CPU autocast's low-precision list: whatever its floating inputs ({inputs}), autocast "
            "casts them to bf16 and the result is bf16."
        )
    if effect == "to fp32 (autocast)":
        return (
            f"{op} is on the fp32 list (losses are, on CPU and CUDA): autocast casts its inputs up to fp32."
        )
    extra = ""
    if op == "softmax" and predicted == torch.float32:
        extra = " (On CUDA softmax is on the fp32 list; on CPU it is on no list.)"
    elif op == "softmax":
        extra = " Not every op inside an autocast region runs in bf16: only the listed ones are cast."
    return (
        f"{op} is on no CPU autocast list: it runs in the dtype its inputs arrive in ({inputs}), with PyTorch's "
        f"ordinary type promotion when they are mixed.{extra}"
    )


@register(f"{SLUG}-xray-predict")
def check_xray_predict(predict_xray: Any) -> None:
    """``predict_xray()`` -> a list of torch dtypes, one per op of :func:`xray_probe_rows`, in order:
    the output dtype the x-ray records for each op of :class:`XRayProbe` under CPU bf16 autocast."""
    label = f"{SLUG}-xray-predict"
    hint = (
        "follow the dtypes through the model: ops on the low-precision list (linear, matmul) give bf16 whatever "
        "their inputs; losses give fp32; every other op gives the dtype of its inputs, the wider one when they are "
        "mixed. The embedding's table is fp32."
    )
    table = xray_probe().table
    rows = [f"{module}: {op}" for module, op in zip(table["module"], table["op"])]
    got = call(label, predict_xray)
    if not isinstance(got, (list, tuple)):
        fail(
            label,
            f"you returned {type(got).__name__}; expected a list of {len(rows)} dtypes, one per op, in order.",
            hint,
        )
    if len(got) != len(rows):
        fail(
            label,
            f"you predicted {len(got)} dtypes; the x-ray records {len(rows)} ops.",
            "one dtype per row of xray_probe_rows(), in order.",
        )
    not_dtypes = [i for i, d in enumerate(got) if not isinstance(d, torch.dtype)]
    if not_dtypes:
        i = not_dtypes[0]
        fail(
            label,
            f"prediction {i + 1} ({rows[i]}) is {got[i]!r}, not a torch dtype.",
            "use torch.float32 or torch.bfloat16.",
        )
    want = list(table["_output"])
    wrong = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if not wrong:
        return
    if all(d == torch.bfloat16 for d in got) or all(d == torch.float32 for d in got):
        fail(
            label,
            f"you predicted {got[0]} for every op; the x-ray records {sum(w == torch.bfloat16 for w in want)} "
            f"bf16 and {sum(w == torch.float32 for w in want)} fp32 outputs.",
            "autocast casts only the ops on its lists; the others follow their inputs. " + hint,
        )
    i = wrong[0]
    fail(
        label,
        f"{len(wrong)} of {len(rows)} predictions are wrong. The first is op {i + 1}, {rows[i]}, for which you "
        f"predicted {got[i]}: {_xray_mistake(table.iloc[i], got[i])}",
        hint,
    )
