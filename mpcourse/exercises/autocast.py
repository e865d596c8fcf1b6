"""Checks for the exercises of chapter ``autocast``.

Every check runs the learner's code under CPU autocast, whatever device the chapter runs on, and
compares with what PyTorch itself does: the dtypes autocast measurably gives each op, an fp32 or
float64 run of the same model, and the autocast and autograd state seen *inside* the model's
forward pass (by hooks), so that an answer that looks right afterwards but ran the wrong way is
still caught.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import xray
from . import call, fail, plural, register

SLUG = "autocast"


def _are(count: int, total: int, noun: str) -> str:
    """``"1 of 11 predictions is"`` / ``"3 of 11 predictions are"``."""
    return f"{count} of {plural(total, noun)} {'is' if count == 1 else 'are'}"


# ---- autocast-predict ----------------------------------------------------------------------------


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
        "matmul(bf16, bf16)",
        torch.float32,
    ): "matrix products are on the low-precision list; nothing casts bf16 inputs up for them.",
    (
        "softmax(bf16)",
        torch.float32,
    ): "that is CUDA's list. On CPU softmax is not on the fp32 list, so it runs "
    "in the dtype its input arrives in.",
    (
        "softmax(fp32)",
        torch.bfloat16,
    ): "softmax is on no CPU list: autocast does not cast it down, so an fp32 input gives an fp32 result.",
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


@register(
    f"{SLUG}-predict",
    hints=(
        "Sort the calls into three groups: those autocast casts down to bf16, those it casts up to fp32, "
        "and those it leaves alone. The chapter's table of the CPU and CUDA lists says which op is in which.",
        "Read the CPU column, not the CUDA one: several ops that CUDA autocast runs in fp32 are on no CPU list.",
        "For an op on no list, only its inputs decide: it returns their dtype, and when they are mixed, "
        "PyTorch's ordinary type promotion picks the wider one.",
    ),
)
def check_predict(predict_cpu_bf16: Any) -> None:
    """``predict_cpu_bf16()`` -> dict from each call's name to the torch dtype it returns under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    label = f"{SLUG}-predict"
    got = call(label, predict_cpu_bf16)
    want = measured_dtypes()
    if not isinstance(got, dict):
        fail(
            label,
            f"you returned {type(got).__name__}; expected a dict from call names to dtypes.",
            "build a dict whose keys are the call names of the prompt.",
        )
    missing = [k for k in want if k not in got]
    if missing:
        fail(
            label,
            f"your dict has no entry for {missing[0]!r} ({len(missing)} missing).",
            "predict every call listed in the prompt, spelled exactly as there.",
        )
    bad_type = [k for k in want if not isinstance(got[k], torch.dtype)]
    if bad_type:
        fail(
            label,
            f"the prediction for {bad_type[0]!r} is {got[bad_type[0]]!r}, not a torch dtype.",
            "each value must be a torch dtype object (torch.float32 or torch.bfloat16), not a string.",
        )
    wrong = [k for k in want if got[k] != want[k]]
    if not wrong:
        return
    first = wrong[0]
    known = _PREDICTION_MISTAKES.get((first, got[first]))
    if len({got[k] for k in want}) == 1:
        fail(
            label,
            f"you predicted {got[first]} for every call; under CPU bf16 autocast "
            f"{sum(w == torch.bfloat16 for w in want.values())} of them give bf16 and "
            f"{sum(w == torch.float32 for w in want.values())} give fp32.",
            "autocast casts only the ops on its lists; the others follow their inputs.",
        )
    fail(
        label,
        f"{_are(len(wrong), len(want), 'prediction')} wrong, for example {first!r}, for which you predicted "
        f"{got[first]}" + (f": {known}" if known else "."),
        f"find {first.partition('(')[0]} in the chapter's table of the lists, in the CPU column, and look at "
        "the dtypes its inputs arrive in.",
    )


# ---- autocast-fp16-trap ---------------------------------------------------------------------------


class NormedScorer(nn.Module):
    """Scores feature vectors: a projection, an RMS normalisation written out by hand, a linear head.

    Correct in fp32; under fp16 autocast it fails on some batches, which the exercise has the learner
    find and fix without giving up fp16 for the two linear layers.
    """

    def __init__(self, features: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(features, features, bias=False)
        self.head = nn.Linear(features, classes)
        self.eps = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(x))
        mean_square = (h * h).mean(dim=-1, keepdim=True)
        h = h * torch.rsqrt(mean_square + self.eps)
        return self.head(h)


def normed_scorer() -> NormedScorer:
    """The model of the exercise, with fixed weights (the global random state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return NormedScorer()


def trap_batches() -> dict[str, torch.Tensor]:
    """The batches the check runs: an ordinary one and two like those that break the model in fp16."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 64, generator=gen)
    padded = x.clone()
    padded[2:4] = 0.0
    return {
        "an ordinary batch": x,
        "a batch of large features (the same rows times 1000)": x * 1000,
        "a batch padded with two rows of zeros (rows 2 and 3)": padded,
    }


def _fp64_reference(model: NormedScorer, x: torch.Tensor) -> torch.Tensor:
    """The model's forward pass in float64: what fp16 autocast should approximate."""
    with torch.no_grad():
        h = torch.relu(F.linear(x.double(), model.proj.weight.double()))
        h = h * torch.rsqrt((h * h).mean(dim=-1, keepdim=True) + model.eps)
        return F.linear(h, model.head.weight.double(), model.head.bias.double())


@register(
    f"{SLUG}-fp16-trap",
    hints=(
        "Run the model under fp16 autocast on the batches the chapter shows, and compare each intermediate "
        "tensor of its forward pass with the same tensor computed in fp32: the first one that differs is "
        "your culprit.",
        "Two different batches go wrong, for two different reasons: one value leaves fp16's range at the top, "
        "another at the bottom. Compare the numbers involved with torch.finfo(torch.float16).",
        "Only a few ops need fp32; the linear layers do not. Compute those few in fp32 (an autocast region "
        "switched off, with inputs you cast yourself, is one way), then let the head run under autocast again.",
    ),
)
def check_fp16_trap(safe_forward: Any) -> None:
    """``safe_forward(model, x)``: the forward pass of :class:`NormedScorer`, safe under fp16 autocast,
    with both linear layers still in fp16."""
    label = f"{SLUG}-fp16-trap"
    for case, x in trap_batches().items():
        model = normed_scorer()
        seen: dict[str, torch.dtype] = {}
        for name in ("proj", "head"):
            getattr(model, name).register_forward_hook(
                lambda module, args, out, name=name: seen.__setitem__(name, out.dtype)
            )
        with torch.autocast("cpu", dtype=torch.float16):
            out = call(label, safe_forward, model, x)
        want = _fp64_reference(normed_scorer(), x)
        if not isinstance(out, torch.Tensor) or out.shape != want.shape:
            fail(
                label,
                f"for {case} you returned {type(out).__name__}"
                + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
                + f"; expected the model's scores, a tensor of shape {tuple(want.shape)}.",
                "return what the head layer gives, as the model's forward does.",
            )
        changed = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
        if changed:
            fail(
                label,
                f"for {case} your function converted the model's parameters ({', '.join(changed)}) to "
                f"{model.head.weight.dtype}: that is pure low-precision, not autocast, and it changes the model "
                "for everyone who uses it afterwards.",
                "leave the model's fp32 parameters alone; autocast makes the low-precision copies it needs.",
            )
        for name in ("proj", "head"):
            if name not in seen:
                fail(
                    label,
                    f"for {case} your function never ran model.{name}.",
                    "compute the same thing as the model's forward pass, with its own layers.",
                )
            if seen[name] != torch.float16:
                fail(
                    label,
                    f"for {case} model.{name} ran in {seen[name]}, not fp16: your fix switched the linear layers "
                    "out of fp16 too"
                    + (
                        " (bf16's range would avoid the problem, but the exercise keeps fp16)."
                        if seen[name] == torch.bfloat16
                        else ", giving up fp16's speed exactly where it is safe."
                    ),
                    "protect only the ops that fail in fp16; the matrix products of both linear layers must stay "
                    "inside fp16 autocast.",
                )
        got = out.detach().double()
        bad_rows = sorted({int(i) for i in (~torch.isfinite(got)).nonzero()[:, 0]})
        if bad_rows:
            fail(
                label,
                f"for {case} your scores are not finite (inf or NaN) in "
                f"{plural(len(bad_rows), 'row')}: {bad_rows}; the fp32 model's are all finite.",
                "follow one of those rows through the normalisation op by op under fp16 autocast and find where "
                "the first non-finite value appears.",
            )
        error = (got - want).abs().max().item()
        scale = want.abs().max().item()
        if error > 2e-2 * scale:
            bias_only = torch.allclose(
                got, model.head.bias.detach().double().expand_as(got), atol=1e-2 * scale
            )
            fail(
                label,
                f"for {case} your scores differ from the fp32 model's by up to {error:.3g} (the scores are at most "
                f"{scale:.3g} in size)"
                + (
                    ": they are the head's bias alone, so the normalised features reaching the head were all zero."
                    if bias_only
                    else "."
                ),
                "compare each intermediate of the normalisation, computed in fp16 and in fp32, on this batch: "
                "find the first that leaves fp16's range.",
            )


# ---- autocast-inference -------------------------------------------------------------------------


def _probe_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@register(
    f"{SLUG}-inference",
    hints=(
        "Three things are checked, inside the model while it runs: that autocast is on with the dtype you are "
        "given, that autograd records nothing, and what your probabilities are made of.",
        "Detaching or converting a result afterwards does not change how it was computed: what matters is the "
        "state (autocast on? autograd recording?) during the forward pass itself.",
        "The chapter's section on inference names two context managers that stop autograd from recording; "
        "combine one with autocast, and decide in which dtype the softmax should run.",
    ),
)
def check_inference(predict_probabilities: Any) -> None:
    """``predict_probabilities(model, x, device_type, dtype)``: class probabilities in fp32, computed
    under autocast without recording anything for autograd."""
    label = f"{SLUG}-inference"
    # The fp16 case hands over a model in eval mode: an answer that sets the mode must restore the one it found.
    for dtype, training in ((torch.bfloat16, True), (torch.float16, False)):
        model = _probe_model().train(training)
        modes_before = {name: m.training for name, m in model.named_modules()}
        inside: dict[str, Any] = {}

        def record_state(module: nn.Module, args: Any, inside: dict[str, Any] = inside) -> None:
            inside.update(
                grad=torch.is_grad_enabled(),
                autocast=torch.is_autocast_enabled("cpu"),
                autocast_dtype=torch.get_autocast_dtype("cpu"),
                other_autocast=torch.is_autocast_enabled("cuda"),
            )

        model[0].register_forward_pre_hook(record_state)
        model[0].register_forward_hook(
            lambda m, a, out, inside=inside: inside.update(out=out.dtype, graph=out.requires_grad)
        )
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
        probs = call(label, predict_probabilities, model, x, "cpu", dtype)
        case = f"dtype={dtype}"
        if not inside:
            fail(
                label,
                f"for {case} your function never ran the model on x.",
                "compute the probabilities from the model's output for x.",
            )
        if not isinstance(probs, torch.Tensor) or probs.shape != (5, 4):
            fail(
                label,
                f"for {case} you returned {type(probs).__name__}"
                + (f" of shape {tuple(probs.shape)}" if isinstance(probs, torch.Tensor) else "")
                + "; expected a (5, 4) tensor of probabilities, one row per input.",
                "return one probability per class for each row of x: a tensor shaped like the logits.",
            )
        changed = [n for n, p in model.named_parameters() if p.dtype != torch.float32 or not p.requires_grad]
        if changed:
            fail(
                label,
                f"for {case} your function changed the model's parameters ({', '.join(changed)}): their dtype or "
                "requires_grad is not what it was. Inference must leave the model as it found it, ready to train.",
                "leave the parameters alone; what autocast and autograd do during one call can be set for that "
                "call only, with context managers.",
            )
        modes_after = {name: m.training for name, m in model.named_modules()}
        switched = [name for name, mode in modes_before.items() if modes_after.get(name) != mode]
        if switched:
            mode_of = {True: "training", False: "eval"}
            subs = [name for name in switched if name]
            which = " and ".join(
                (["the model itself"] if "" in switched else [])
                + ([f"{plural(len(subs), 'submodule')} ({', '.join(subs)})"] if subs else [])
            )
            fail(
                label,
                f"for {case} the model was in {mode_of[training]} mode and your function left "
                f"{which} in {mode_of[not training]} mode. Inference must leave the model as it found it: if you "
                "change the mode, note model.training first and restore it with model.train(that value) before "
                "returning.",
                "the check hands over models in either mode: put back the mode you found, not a fixed one.",
            )
        if not inside["autocast"]:
            fail(
                label,
                f"for {case} the model did not run under CPU autocast"
                + (
                    ": you opened an autocast region for 'cuda', but the model and x are on the CPU."
                    if inside["other_autocast"]
                    else "."
                ),
                "open the autocast region for the device_type you are given, around the model's forward pass.",
            )
        if inside["autocast_dtype"] != dtype:
            fail(
                label,
                f"for {case} the model ran under {inside['autocast_dtype']} autocast, not the {dtype} asked for.",
                "autocast without a dtype uses the device's default (bf16 on CPU, fp16 on CUDA); pass the dtype "
                "you are given.",
            )
        if inside["grad"]:
            if probs.requires_grad:
                fail(
                    label,
                    f"for {case} autograd recorded the forward pass: the result requires grad.",
                    "inference needs no graph; find how to stop autograd from recording while the model runs.",
                )
            fail(
                label,
                f"for {case} autograd was recording during the forward pass: the first layer's output required "
                "grad. Your result does not, because it was detached afterwards, but by then autograd had built the "
                "graph and kept every tensor backward would need.",
                "detaching cuts the result off a graph that has already been built; stop autograd from recording "
                "in the first place, for the whole forward pass.",
            )
        if probs.dtype != torch.float32:
            fail(
                label,
                f"for {case} the probabilities are {probs.dtype}, not fp32.",
                "the logits come out of autocast in low precision; decide where the conversion to fp32 belongs.",
            )
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            logits = model(x)
        want = torch.softmax(logits.float(), dim=-1)
        if torch.allclose(probs, want, atol=1e-6):
            continue
        low_softmax = torch.softmax(logits, dim=-1).float()
        got = probs.detach()
        if torch.allclose(got, low_softmax, atol=1e-6):
            off = (got.double().sum(-1) - 1).abs().max().item()
            fail(
                label,
                f"for {case} the softmax ran in {logits.dtype} and only its result was converted to fp32: each "
                f"probability carries {logits.dtype}'s rounding error, and the rows sum to 1 only to "
                f"{logits.dtype}'s precision (the worst row is off by {off:.1e}; an fp32 softmax is off by "
                "about 1e-7).",
                "the conversion to fp32 comes too late in your function: by then the softmax has already rounded.",
            )
        if torch.allclose(got.double().sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-4):
            fail(
                label,
                f"for {case} your rows sum to 1, but the probabilities differ from a softmax of the model's "
                "autocast logits.",
                "compute the probabilities from the logits this model gives for x, over the last dimension.",
            )
        if torch.allclose(got.double().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-4):
            fail(
                label,
                f"for {case} your columns sum to 1, not your rows: the softmax ran over the batch dimension.",
                "each row of x is one input; its class probabilities lie along the last dimension.",
            )
        if torch.allclose(got.double().exp().sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-4):
            fail(
                label,
                f"for {case} your values are log-probabilities (their exponentials sum to 1 per row), not "
                "probabilities.",
                "the exercise asks for probabilities themselves.",
            )
        fail(
            label,
            f"for {case} the rows of your result do not sum to 1 (row sums: "
            f"{[round(v, 4) for v in got.double().sum(-1).tolist()]}): these are not probabilities.",
            "the model returns logits, unnormalised scores; probabilities over the classes need one more step.",
        )


# ---- autocast-custom-fwd -----------------------------------------------------------------------


@register(
    f"{SLUG}-custom-fwd",
    hints=(
        "Autocast's lists know only PyTorch's own ops: inside your Function's forward, nothing converts a bf16 "
        "input to fp32 unless you arrange it. The chapter's paragraph on custom autograd functions says how.",
        "torch.amp has one decorator for forward and one for backward; one of forward's arguments makes autocast "
        "convert the floating inputs before forward sees them, and run forward with autocast off.",
        "backward receives the gradient of the output, one number per row, and must return the gradient of "
        "the input, one per element: differentiate the forward by hand and broadcast over the last dimension.",
    ),
)
def check_custom_fwd(make_sum_of_squares: Any) -> None:
    """``make_sum_of_squares()`` -> the ``apply`` of a ``torch.autograd.Function`` computing
    ``(x * x).sum(-1)`` that always runs in fp32 under CPU autocast."""
    label = f"{SLUG}-custom-fwd"
    fn = call(label, make_sum_of_squares)
    owner = getattr(fn, "__self__", None)
    if not (isinstance(owner, type) and issubclass(owner, torch.autograd.Function)):
        fail(
            label,
            f"you returned {fn!r}; expected the apply method of a torch.autograd.Function subclass.",
            "return the apply attribute of your Function class, not the class or a plain function.",
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
                fail(
                    label,
                    f"for {case} your function raised {type(exc).__name__}: {exc}",
                    "run your Function on a small input outside autocast first, and read the traceback.",
                )
        want = (x.detach().double() ** 2).sum(-1)
        if not isinstance(out, torch.Tensor) or out.shape != want.shape:
            fail(
                label,
                f"for {case} the forward pass returned "
                + (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
                + f"; expected one sum per row, shape {tuple(want.shape)}.",
                "sum over the last dimension only.",
            )
        if out.dtype != torch.float32:
            fail(
                label,
                f"for {case} the output is {out.dtype}: the forward pass did not run in fp32.",
                "autocast does not look inside your Function; find how forward's decorator can convert its inputs.",
            )
        if not torch.allclose(out.double(), want, rtol=1e-5):
            fail(
                label,
                f"for {case} the forward result is wrong (largest relative error "
                f"{((out.double() - want).abs() / want).max().item():.1e}).",
                "compute the sum of the squares of each row, in fp32.",
            )
        try:
            out.sum().backward()
        except Exception as exc:  # noqa: BLE001 - the learner's backward failed
            fail(
                label,
                f"for {case} backward raised {type(exc).__name__}: {exc}",
                "backward gets one gradient per row and must return one per element of x: mind the shapes.",
            )
        if x.grad is None or x.grad.dtype != dtype:
            fail(
                label,
                f"for {case} the gradient is {None if x.grad is None else x.grad.dtype}, expected {dtype}.",
                "the gradient reaching x must have x's dtype; let autograd take it back through the input cast.",
            )
        if not torch.allclose(x.grad.double(), 2 * x.detach().double(), rtol=1e-2):
            fail(
                label,
                f"for {case} the gradient is wrong.",
                "differentiate the sum of squares by hand, and compare with torch.autograd.gradcheck on a small "
                "float64 input.",
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


@register(
    f"{SLUG}-xray-predict",
    hints=(
        "Go through the forward pass line by line, writing down the dtype of every tensor as it is created: "
        "what an op receives decides what an unlisted op returns.",
        "Start from the embedding's table, which is fp32, and watch the residual add: fp32 plus bf16 is "
        "ordinary type promotion, not autocast.",
        "Linear layers and matrix products give bf16 whatever their inputs; the loss gives fp32; every other op "
        "gives the dtype of its inputs, the wider one when they are mixed.",
    ),
)
def check_xray_predict(predict_xray: Any) -> None:
    """``predict_xray()`` -> a list of torch dtypes, one per op of :func:`xray_probe_rows`, in order:
    the output dtype the x-ray records for each op of :class:`XRayProbe` under CPU bf16 autocast."""
    label = f"{SLUG}-xray-predict"
    table = xray_probe().table
    rows = [f"{module}: {op}" for module, op in zip(table["module"], table["op"])]
    got = call(label, predict_xray)
    if not isinstance(got, (list, tuple)):
        fail(
            label,
            f"you returned {type(got).__name__}; expected a list of {len(rows)} dtypes, one per op, in order.",
            "return a list, in the order of xray_probe_rows().",
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
            "each entry must be a torch dtype object (torch.float32 or torch.bfloat16), not a string.",
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
            "autocast casts only the ops on its lists; the others follow their inputs.",
        )
    i = wrong[0]
    fail(
        label,
        f"{_are(len(wrong), len(rows), 'prediction')} wrong. The first is op {i + 1}, {rows[i]}, for which you "
        f"predicted {got[i]}: {_xray_mistake(table.iloc[i], got[i])}",
        f"look at the line of the forward pass that computes op {i + 1}, and at the dtypes of its inputs there.",
    )


# ---- autocast-cache-count ------------------------------------------------------------------------

#: The combinations the check measures: (uses per region, regions, cache_enabled, trainable).
_CACHE_CASES: tuple[tuple[int, int, bool, bool], ...] = tuple(
    (uses, regions, cache, trainable)
    for regions in (1, 2, 3)
    for uses in (1, 2, 5)
    for cache in (True, False)
    for trainable in (True, False)
)


def measured_casts(uses: int, regions: int, cache: bool, trainable: bool) -> int:
    """Casts to bf16 while an fp32 batch goes ``uses`` times, chained, through one ``nn.Linear(16, 16)``
    in each of ``regions`` successive CPU bf16 autocast regions (``cache_enabled=cache``), its weight
    and bias requiring grad if ``trainable``."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 16).requires_grad_(trainable)
    h = torch.randn(4, 16)
    with xray.kernel_recording() as rows:
        for _ in range(regions):
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
                out = h
                for _ in range(uses):
                    out = layer(out)
    return xray.count_casts(rows, torch.bfloat16)


def _case(uses: int, regions: int, cache: bool, trainable: bool) -> str:
    grad = "parameters that require grad" if trainable else "frozen parameters"
    return f"uses={uses}, regions={regions}, cache={cache}, trainable={trainable} ({grad})"


#: Recognised wrong models of the cache: a count for each case, and what the learner missed.
_CACHE_MISTAKES: tuple[tuple[Callable[[int, int, bool, bool], int], str, str], ...] = (
    (
        lambda u, r, c, t: r * 2 * (1 if c and t else u),
        "you counted no cast of the input: the batch arrives in fp32, and the first linear layer of each "
        "region casts it to bf16 too.",
        "count every tensor that is fp32 when a linear layer receives it, not only the parameters.",
    ),
    (
        lambda u, r, c, t: r * (u + 2 * (1 if c and t else u)),
        "you cast the input at every use: only the first use receives the fp32 batch; the later ones receive "
        "the previous use's bf16 output, which needs no cast.",
        "follow the dtype of the activation from one use to the next.",
    ),
    (
        lambda u, r, c, t: (r + 2) if c and t else r * (1 + 2 * u),
        "you kept the cache across regions: it is emptied when the (outermost) region exits, so each new "
        "region casts the parameters again.",
        "reread when the chapter says the cache is emptied.",
    ),
    (
        lambda u, r, c, t: r * (1 + 2 * (1 if c else u)),
        "you cached frozen parameters: the cache holds only fp32 leaf tensors that require grad, so a frozen "
        "weight is cast at every use even with the cache on.",
        "reread which tensors the cache keeps.",
    ),
    (
        lambda u, r, c, t: r * (1 + (1 if c and t else u)),
        "you cast the weight but not the bias: a linear layer's bias is a parameter too, cast like the weight.",
        "list every fp32 tensor a linear layer reads.",
    ),
    (
        lambda u, r, c, t: r * (1 + 2 * u),
        "you counted as if the cache never helped: with cache_enabled=True and parameters that require grad, "
        "each parameter is cast once per region and the copy reused.",
        "what does the cache save at the second use of the same weight?",
    ),
)


@register(
    f"{SLUG}-cache-count",
    hints=(
        "Run the chapter's cache table in your head first: which casts does one region with one use need, "
        "and which of them does a second use repeat?",
        "Treat the input and the parameters separately: the input is fp32 only at the first use of a region; "
        "a parameter's copy is kept only under the cache's two conditions, and only until the region ends.",
        "Write the count for one region, then multiply: regions are independent.",
    ),
)
def check_cache_count(predict_casts: Any) -> None:
    """``predict_casts(uses, regions, cache, trainable)`` -> the number of casts to bf16 that
    :func:`measured_casts` counts, for every combination of :data:`_CACHE_CASES`."""
    label = f"{SLUG}-cache-count"
    predicted, measured = {}, {}
    for case in _CACHE_CASES:
        got = call(label, predict_casts, *case)
        if isinstance(got, bool) or not isinstance(got, numbers.Real) or got != int(got):
            fail(
                label,
                f"for {_case(*case)} you returned {got!r}; expected a whole number of casts.",
                "return an int: the number of cast kernels.",
            )
        predicted[case], measured[case] = int(got), measured_casts(*case)
    wrong = [case for case in _CACHE_CASES if predicted[case] != measured[case]]
    if not wrong:
        return
    for model, what, hint in _CACHE_MISTAKES:
        if all(predicted[case] == model(*case) for case in _CACHE_CASES):
            fail(label, what, hint)
    case = wrong[0]
    fail(
        label,
        f"{_are(len(wrong), len(_CACHE_CASES), 'count')} wrong. The first: for {_case(*case)} you predicted "
        f"{predicted[case]} casts; autocast makes {measured[case]}.",
        "work out that case by hand: which tensors arrive in fp32 at each use, and which copies the cache keeps.",
    )


# Keep the names the chapter and the tests import in one place.
__all__ = [
    "NormedScorer",
    "XRayProbe",
    "measured_casts",
    "measured_dtypes",
    "normed_scorer",
    "trap_batches",
    "xray_probe",
    "xray_probe_rows",
]
