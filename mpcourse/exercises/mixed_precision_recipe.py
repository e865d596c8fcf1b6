"""Checks for the exercises of chapter ``mixed_precision_recipe``."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import memory
from . import ExerciseFailed, call, expect_close, fail, is_tensor_pair, register

SLUG = "mixed_precision_recipe"


def _as_bool_tensor(label: str, got: Any, shape: torch.Size, case: str, hint: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        fail(
            label,
            f"for {case} you returned {type(got).__name__}"
            f"{'' if not isinstance(got, torch.Tensor) else ' of dtype ' + str(got.dtype)}; expected a bool tensor.",
            hint,
        )
    if got.shape != shape:
        fail(label, f"for {case} the result has shape {tuple(got.shape)}, expected {tuple(shape)}.", hint)
    return got


@register(f"{SLUG}-lost-update")
def check_lost_update(update_survives: Any) -> None:
    """``update_survives(w, u, dtype)``: for fp32 tensors w and u, whether w + u, with both stored
    in ``dtype`` and the sum rounded to ``dtype``, differs from w stored in ``dtype``."""
    label = f"{SLUG}-lost-update"
    hint = (
        "in pure low-precision training the weight and the update are both stored in `dtype`, and "
        "the sum is rounded to `dtype` again: convert w and u to `dtype`, add them (the result stays "
        "in `dtype`), and compare with w converted to `dtype`."
    )
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(4000, generator=gen) * torch.logspace(-3, 1, 4000)
    u = (
        w
        * torch.logspace(-6, -1, 4000)[torch.randperm(4000, generator=gen)]
        * torch.sign(torch.randn(4000, generator=gen))
    )
    exact_half_ulp = torch.tensor([1.0, 1.0, 1.0, 256.0]), torch.tensor([2.0**-9, 2.0**-8, 3 * 2.0**-9, 1.0])
    # w just below 2 rounds up to 2 in bf16, where fp32's spacing doubles: an update of 2^-23 survives next to
    # the fp32 w but is a tie (rounded away) next to 2. This case tells apart the answers that stay partly fp32.
    below_two = torch.tensor([2.0 - 2.0**-20, 1.5]), torch.tensor([2.0**-23, 2.0**-23])
    cases = {
        "random weights and updates, bf16": (w, u, torch.bfloat16),
        "random weights and updates, fp16": (w, u, torch.float16),
        "random weights and updates, fp32": (w, u, torch.float32),
        "updates of exactly half an ulp and more (bf16, ties round to even)": (
            *exact_half_ulp,
            torch.bfloat16,
        ),
        "weights just below a power of two, updates near fp32's resolution (bf16)": (
            *below_two,
            torch.bfloat16,
        ),
    }
    answers = {
        case: _as_bool_tensor(
            label, call(label, update_survives, wc.clone(), uc.clone(), dtype), wc.shape, case, hint
        )
        for case, (wc, uc, dtype) in cases.items()
    }

    def partly_fp32(wc: torch.Tensor, uc: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """What answers in which part of the computation stayed fp32 would return."""
        return {
            "everything was computed in fp32, nothing stored in `dtype`": (wc + uc) != wc,
            "u stayed fp32, so adding it to w in `dtype` promoted the sum to fp32": (wc.to(dtype) + uc)
            != wc.to(dtype),
            "the sum was rounded to `dtype` but compared with the fp32 w, which `dtype` cannot hold either": (
                (wc.to(dtype) + uc.to(dtype)) != wc
            ),
        }

    # A mistake is named only if it explains the answer on every case: on random data these three often
    # coincide (every update "survives"), and the other cases tell them apart.
    consistent = [
        why
        for why in partly_fp32(w, u, torch.float32)
        if all(torch.equal(answers[c], partly_fp32(*cases[c])[why]) for c in cases)
    ]
    for case, (wc, uc, dtype) in cases.items():
        got = answers[case]
        want = (wc.to(dtype) + uc.to(dtype)) != wc.to(dtype)
        if torch.equal(got, want):
            continue
        if consistent:
            fail(
                label,
                f"for {case} your answer says {int(got.sum())} of {got.numel()} updates survive, as if part of the "
                f"computation stayed in fp32: {'; or '.join(consistent)}.",
                "keep all three in `dtype`: w converted, u converted, their sum (which stays in `dtype`), and compare "
                "it with w converted.",
            )
        eps_rule = uc.abs() > torch.finfo(dtype).eps * wc.abs()
        half_eps_rule = uc.abs() >= torch.finfo(dtype).eps / 2 * wc.abs()
        if torch.equal(got, eps_rule) or torch.equal(got, half_eps_rule):
            fail(
                label,
                f"for {case} you compared |u| with a multiple of eps*|w|; that rule is only approximate.",
                "the spacing of floats is a power of two that depends on w's exponent, and ties round to "
                "even: do the addition in `dtype` instead of predicting it.",
            )
        fail(label, f"for {case} {int((got != want).sum())} of {want.numel()} answers are wrong.", hint)


@register(f"{SLUG}-master-weights")
def check_master_weights(master_weight_step: Any) -> None:
    """``master_weight_step(master, grad, lr, low_dtype)`` -> ``(new_master, low_copy)``: one SGD
    step on fp32 master weights, with a gradient that arrives in ``low_dtype``."""
    label = f"{SLUG}-master-weights"
    hint = (
        "upcast the gradient to fp32 before multiplying it by the learning rate, update the fp32 master "
        "weights, then make the low-precision copy from the *updated* master."
    )
    gen = torch.Generator().manual_seed(3)
    master = torch.randn(512, generator=gen)
    tiny = torch.full((512,), 2.0**-14) * torch.rand(512, generator=gen)  # small fp16 gradients
    cases = {
        "a bf16 gradient, lr = 1e-4": (
            master,
            torch.randn(512, generator=gen).bfloat16(),
            1e-4,
            torch.bfloat16,
        ),
        "an fp16 gradient near fp16's smallest normal, lr = 1e-3": (master, tiny.half(), 1e-3, torch.float16),
        "an fp16 gradient, lr = 0.5": (master, torch.randn(512, generator=gen).half(), 0.5, torch.float16),
    }
    for case, (m, g, lr, low) in cases.items():
        result = call(label, master_weight_step, m.clone(), g.clone(), lr, low)
        if not is_tensor_pair(result):
            fail(
                label,
                f"for {case} you returned {type(result).__name__}; expected a tuple (new_master, low_copy).",
                hint,
            )
        new_master, low_copy = result
        want = m - lr * g.float()
        if new_master.dtype != torch.float32:
            fail(
                label,
                f"for {case} the new master weights are {new_master.dtype}.",
                "the master weights stay fp32: that is the point of keeping them.",
            )
        if low_copy.dtype != low:
            fail(
                label,
                f"for {case} the copy is {low_copy.dtype}, expected {low}.",
                "the copy is what the forward pass uses.",
            )
        if not torch.allclose(new_master, want, rtol=1e-6, atol=0):
            mistakes = {
                "the master weights did not move.": (m, hint),
                "the update was applied to the low-precision weights, so small updates were lost.": (
                    (m.to(low) - (lr * g).to(low)).float(),
                    "apply the update to the fp32 master and only then make the low-precision copy.",
                ),
                f"lr * grad was computed in {low} before upcasting; in fp16 small products underflow.": (
                    m - (lr * g).float(),
                    "convert the gradient to fp32 first, then multiply by the learning rate.",
                ),
            }
            for what, (value, why) in mistakes.items():
                if torch.allclose(new_master, value, rtol=1e-6, atol=0):
                    fail(label, f"for {case} {what}", why)
            fail(label, f"for {case} the new master weights are not master - lr * grad.", hint)
        if not torch.equal(low_copy, want.to(low)):
            if torch.equal(low_copy, m.to(low)):
                fail(
                    label,
                    f"for {case} the low-precision copy still holds the old weights.",
                    "make the copy after the update.",
                )
            fail(
                label, f"for {case} the low-precision copy is not the updated master rounded to {low}.", hint
            )


def _exact_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


@register(f"{SLUG}-fp32-accumulate")
def check_fp32_accumulate(dot_fp32_accumulate: Any) -> None:
    """``dot_fp32_accumulate(a, b)``: the dot product of two low-precision vectors as tensor cores
    compute it: exact products, accumulated in fp32, returned as an fp32 scalar tensor."""
    label = f"{SLUG}-fp32-accumulate"
    hint = (
        "the product of two bf16 (or fp16) numbers is exact in fp32; convert both vectors to fp32 "
        "*before* multiplying, then sum in fp32, and do not round the result back."
    )
    gen = torch.Generator().manual_seed(11)
    cases = {}
    for n in (16, 256, 1024):
        for dtype in (torch.bfloat16, torch.float16):
            a = torch.randn(n, generator=gen).to(dtype)
            b = (torch.rand(n, generator=gen) + 0.5).to(dtype)
            cases[f"two positive {dtype} vectors of length {n}"] = (a.abs(), b)
            cases[f"two {dtype} vectors of length {n} with mixed signs"] = (a, b)
    for case, (a, b) in cases.items():
        got = call(label, dot_fp32_accumulate, a.clone(), b.clone())
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            fail(label, f"for {case} you returned {type(got).__name__}; expected a one-element tensor.", hint)
        if got.dtype != torch.float32:
            fail(
                label,
                f"for {case} the result is {got.dtype}: it was rounded to low precision at the end.",
                "an fp32 accumulator hands back an fp32 result; keep it.",
            )
        want = _exact_dot(a, b)
        # fp32 accumulation of n terms errs by about sqrt(n) units of 2^-24 of the magnitudes summed.
        scale = float((a.double() * b.double()).abs().sum())
        if abs(float(got) - want) <= 1e-5 * scale:
            continue
        products_rounded = float((a * b).float().sum())
        if abs(products_rounded - want) > 1e-5 * scale and math.isclose(
            float(got), products_rounded, rel_tol=1e-6
        ):
            fail(label, f"for {case} each product was rounded to {a.dtype} before the fp32 sum.", hint)
        fail(
            label,
            f"for {case} your result {float(got):.7g} differs from the exact {want:.7g} by more than "
            "fp32 accumulation can explain.",
            hint,
        )


@register(f"{SLUG}-memory")
def check_memory(persistent_bytes: Any) -> None:
    """``persistent_bytes(n_params, recipe)``: bytes of weights + gradients + AdamW state for
    ``recipe`` in ``"fp32"``, ``"amp"``, ``"pure_bf16"``."""
    label = f"{SLUG}-memory"
    hint = (
        "count, per parameter, the weights, their gradients and AdamW's two moments, each in the dtype "
        "the recipe keeps them in. Autocast's 16-bit copies are temporary: leave them out."
    )
    mistakes = {
        (
            "amp",
            8,
        ): "AMP does not halve the per-parameter state: the master weights, gradients and moments stay fp32.",
        (
            "amp",
            10,
        ): "you counted autocast's transient 16-bit copy as persistent, or halved the gradients; neither stays.",
        (
            "amp",
            18,
        ): "autocast's 16-bit weight copy is temporary (rebuilt every step): it is not persistent state.",
        (
            "amp",
            20,
        ): "with autocast there are no separate fp16 weights and gradients next to the master copy.",
        ("fp32", 8): "AdamW keeps two moments per parameter: count the optimizer state.",
        ("fp32", 12): "AdamW keeps *two* moments (first and second), not one.",
        (
            "pure_bf16",
            16,
        ): "pure bf16 keeps everything in bf16, the optimizer state included (torch.optim follows the parameter dtype).",
        ("pure_bf16", 4): "AdamW keeps two moments per parameter: count the optimizer state.",
    }
    for recipe, scheme in (("fp32", "fp32"), ("amp", "amp"), ("pure_bf16", "pure_bf16")):
        for n in (1, 1_000_000, 7_000_000_000):
            got = call(label, persistent_bytes, n, recipe)
            per = memory.bytes_per_parameter(scheme, "adamw")
            want = n * (per["weights"] + per["gradients"] + per["optimizer state"])
            if isinstance(got, (int, float)):
                for (r, bpp), message in mistakes.items():
                    if r == recipe and math.isclose(got, bpp * n, rel_tol=1e-9):
                        fail(
                            label,
                            f"for {n:,} parameters under {recipe!r} you get {bpp} bytes per parameter.",
                            message,
                        )
            expect_close(label, got, want, rtol=1e-9, case=f"{n:,} parameters under {recipe!r}", hint=hint)


class _SpyScaler:
    """Wraps a GradScaler and records the order of the calls made on it."""

    def __init__(self, init_scale: float) -> None:
        self.inner = torch.amp.GradScaler("cpu", init_scale=init_scale)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return spy


def _reference_step(model, optimizer, scaler, x, y, dtype):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


@register(f"{SLUG}-train-step")
def check_train_step(amp_train_step: Any) -> None:
    """``amp_train_step(model, optimizer, scaler, x, y, device_type, dtype)``: one correct
    mixed-precision training step with cross-entropy loss; returns the loss."""
    label = f"{SLUG}-train-step"
    hint = (
        "zero the gradients; run the forward pass and the loss under torch.autocast(device_type, "
        "dtype=dtype); call backward on scaler.scale(loss), outside autocast; then scaler.step(optimizer) "
        "and scaler.update()."
    )
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        ref_model = copy.deepcopy(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
        spy, ref_scaler = _SpyScaler(2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)
        out_dtypes: list[torch.dtype] = []
        model[0].register_forward_hook(lambda m, a, out, log=out_dtypes: log.append(out.dtype))
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        poisoned = x.clone()
        poisoned[0, 0] = float("inf")
        for step, batch in enumerate((x, x, poisoned, x)):
            case = f"step {step + 1} with dtype={dtype}" + (
                " (an input holds inf: the step must be skipped)" if step == 2 else ""
            )
            spy.calls.clear()
            try:
                got = call(label, amp_train_step, model, opt, spy, batch, y, "cpu", dtype)
            except ExerciseFailed as exc:
                if "No inf checks were recorded" in str(exc):
                    fail(
                        label,
                        f"for {case} scaler.update() complained that no inf checks were recorded.",
                        "step through the scaler, scaler.step(optimizer): it unscales the gradients, checks "
                        "them for inf/NaN and records that check for update().",
                    )
                raise
            want = _reference_step(ref_model, ref_opt, ref_scaler, batch, y, dtype).item()
            if out_dtypes[-1:] != [dtype]:
                fail(
                    label,
                    f"for {case} the first linear layer produced {out_dtypes[-1:]}: the forward pass did not run under autocast.",
                    hint,
                )
            for needed in ("scale", "step", "update"):
                if needed not in spy.calls:
                    fail(label, f"for {case} you never called scaler.{needed}().", hint)
            order = [c for c in spy.calls if c in ("scale", "step", "update")]
            if order != ["scale", "step", "update"]:
                fail(label, f"for {case} the scaler was called in the order {order}.", hint)
            for p, q in zip(model.parameters(), ref_model.parameters()):
                if not torch.isfinite(p).all():
                    fail(
                        label,
                        f"for {case} the weights became inf/NaN: the optimizer stepped on an overflowed gradient.",
                        "scaler.step(optimizer) checks the gradients and skips the step when they overflow; "
                        "do not call optimizer.step() yourself.",
                    )
                if not torch.allclose(p, q, rtol=1e-5, atol=1e-6):
                    ratio = ((p - q).abs().max() / (q.abs().max() + 1e-12)).item()
                    fail(
                        label,
                        f"for {case} the weights differ from a correct step (largest relative difference {ratio:.2g}).",
                        "check that the gradients are zeroed every step, that backward runs on the *scaled* "
                        "loss and that the optimizer steps through the scaler (which unscales first).",
                    )
            if spy.inner.get_scale() != ref_scaler.get_scale():
                fail(
                    label,
                    f"for {case} the loss scale is {spy.inner.get_scale()}, expected {ref_scaler.get_scale()}.",
                    hint,
                )
            got_value = (
                float(got.detach())
                if isinstance(got, torch.Tensor)
                else float(got)
                if isinstance(got, (float, int))
                else None
            )
            if got_value is None:
                fail(label, f"for {case} you returned {type(got).__name__}; return the loss.", hint)
            if math.isfinite(want) and not math.isclose(got_value, want, rel_tol=1e-5):
                scale = ref_scaler.get_scale()
                if math.isclose(got_value, want * scale, rel_tol=1e-3):
                    fail(
                        label,
                        f"for {case} you returned the scaled loss.",
                        "return the loss itself, not scaler.scale(loss).",
                    )
                fail(label, f"for {case} the returned loss is {got_value}, expected {want}.", hint)
