"""The checks of chapter autocast: reference solutions and valid alternatives pass, realistic mistakes fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpcourse.exercises import ExerciseFailed, check, hints, labels
from mpcourse.exercises.autocast import (
    _CACHE_CASES,
    measured_casts,
    measured_dtypes,
    normed_scorer,
    trap_batches,
)

SLUG = "autocast"
F32, BF16 = torch.float32, torch.bfloat16


def test_the_chapter_has_these_exercises() -> None:
    assert labels(SLUG) == [
        "autocast-cache-count",
        "autocast-custom-fwd",
        "autocast-fp16-trap",
        "autocast-inference",
        "autocast-predict",
        "autocast-xray-predict",
    ]
    for label in labels(SLUG):
        assert 2 <= len(hints(label)) <= 4, label


# --- predict -------------------------------------------------------------------------------------------

ANSWER = {
    "linear(fp32 input, fp32 weight)": BF16,
    "matmul(bf16, bf16)": BF16,
    "relu(bf16)": BF16,
    "softmax(bf16)": BF16,
    "softmax(fp32)": F32,
    "layer_norm(fp32)": F32,
    "add(bf16, fp32)": F32,
    "cat([bf16, fp32])": F32,
    "cross_entropy(bf16 logits)": F32,
    "mse_loss(bf16, bf16)": F32,
    "embedding(int ids, fp32 table)": F32,
}


def test_the_answer_is_what_torch_does_on_cpu() -> None:
    assert measured_dtypes() == ANSWER


def test_predict_accepts_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-predict", lambda: dict(ANSWER))
    assert capsys.readouterr().err == ""


def test_predict_accepts_an_answer_built_from_the_rules() -> None:
    """Another way to write it: everything fp32 except what is cast down or follows a bf16 input."""

    def by_rules():
        answer = {name: torch.float32 for name in ANSWER}
        answer.update({name: torch.bfloat16 for name in ANSWER if name.startswith(("linear", "matmul"))})
        answer.update({"relu(bf16)": torch.bfloat16, "softmax(bf16)": torch.bfloat16})
        return answer

    check(f"{SLUG}-predict", by_rules)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"softmax(bf16)": F32}, "CUDA's list"),
        ({"add(bf16, fp32)": BF16}, "type promotion"),
        ({"linear(fp32 input, fp32 weight)": F32}, "first thing autocast casts down"),
        ({"matmul(bf16, bf16)": F32}, "low-precision list"),
        ({"softmax(fp32)": BF16}, "softmax is on no CPU list"),
        ({"cross_entropy(bf16 logits)": BF16}, "losses are on the fp32 list"),
        ({"embedding(int ids, fp32 table)": BF16}, "not on any list"),
        ({"layer_norm(fp32)": BF16}, "layer_norm"),
        ({"cat([bf16, fp32])": BF16}, "widest"),
        ({"relu(bf16)": F32, "softmax(bf16)": F32}, r"^autocast-predict: 2 of 11 predictions are wrong"),
        ({"relu(bf16)": F32}, r"1 of 11 predictions is wrong"),
        ({k: BF16 for k in ANSWER}, "for every call"),  # "everything runs in bf16"
        ({k: F32 for k in ANSWER}, "for every call"),
        ({"relu(bf16)": "bf16"}, "not a torch dtype"),
    ],
)
def test_predict_rejects_mistakes(changes, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-predict", lambda: ANSWER | changes)


def test_predict_rejects_incomplete_answers() -> None:
    with pytest.raises(ExerciseFailed, match="no entry"):
        check(f"{SLUG}-predict", lambda: {"relu(bf16)": BF16})
    with pytest.raises(ExerciseFailed, match="expected a dict"):
        check(f"{SLUG}-predict", lambda: [BF16])


# --- fp16-trap ----------------------------------------------------------------------------------------


def safe_forward(model, x):
    h = torch.relu(model.proj(x))
    with torch.autocast("cpu", enabled=False):
        h = h.float()
        h = h * torch.rsqrt((h * h).mean(dim=-1, keepdim=True) + model.eps)
    return model.head(h)


def with_rms_norm(model, x):  # the library op, which accumulates in fp32 inside
    return model.head(F.rms_norm(torch.relu(model.proj(x)), (64,), eps=model.eps))


def cast_without_a_region(model, x):  # mul and mean are on no list: fp32 inputs keep them fp32
    h = torch.relu(model.proj(x)).float()
    return model.head(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + model.eps))


def in_bf16(model, x):  # bf16 has fp32's range: no overflow, no underflow, 3 digits are enough here
    h = torch.relu(model.proj(x)).bfloat16()
    return model.head(h * torch.rsqrt((h * h).mean(-1, keepdim=True) + model.eps))


@pytest.mark.parametrize("answer", [safe_forward, with_rms_norm, cast_without_a_region, in_bf16])
def test_fp16_trap_accepts_valid_fixes(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-fp16-trap", answer)
    assert capsys.readouterr().err == ""


def test_the_model_really_fails_in_fp16_and_works_in_fp32() -> None:
    batches = trap_batches()
    model = normed_scorer()
    with torch.autocast("cpu", dtype=torch.float16):
        large = model(batches["a batch of large features (the same rows times 1000)"])
        padded = model(batches["a batch padded with two rows of zeros (rows 2 and 3)"])
    assert torch.allclose(large.float(), model.head.bias.detach().expand_as(large), atol=1e-2)  # h * 0
    assert padded[2:4].isnan().all() and padded[[0, 1, 4, 5]].isfinite().all()
    assert torch.isfinite(model(batches["a batch padded with two rows of zeros (rows 2 and 3)"])).all()


def _norm(h, eps):
    return h * torch.rsqrt((h * h).mean(-1, keepdim=True) + eps)


def unchanged(model, x):
    return model(x)


def autocast_off_everywhere(model, x):
    with torch.autocast("cpu", enabled=False):
        return model(x)


def cast_after_squaring(model, x):
    h = torch.relu(model.proj(x))
    mean_square = (h * h).float().mean(-1, keepdim=True)  # the square has already overflowed
    return model.head(h * torch.rsqrt(mean_square + model.eps))


def larger_eps_only(model, x):
    return model.head(_norm(torch.relu(model.proj(x)), 1e-4))


def clamp_to_fp16_max(model, x):
    h = torch.relu(model.proj(x))
    mean_square = (h * h).mean(-1, keepdim=True).clamp(max=65504).float()
    return model.head(h * torch.rsqrt(mean_square + model.eps))


def scaled_squares(model, x):  # no overflow any more, but eps still underflows in fp16
    h = torch.relu(model.proj(x))
    s = h.abs().amax(-1, keepdim=True).clamp(min=1)
    return model.head((h / s) * torch.rsqrt(((h / s) * (h / s)).mean(-1, keepdim=True) + model.eps))


def f_normalize(model, x):  # its eps (1e-12) underflows in fp16 too
    return model.head(F.normalize(torch.relu(model.proj(x)), dim=-1) * 8)


def nan_to_num(model, x):
    return torch.nan_to_num(model(x))


def model_half(model, x):
    return model.half()(x)


def bf16_region(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


def head_in_fp32_too(model, x):
    h = torch.relu(model.proj(x))
    with torch.autocast("cpu", enabled=False):
        return model.head(_norm(h.float(), model.eps))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (unchanged, r"large features.*head's bias alone"),
        (cast_after_squaring, r"large features.*differ from the fp32 model's"),
        (larger_eps_only, r"large features.*head's bias alone"),
        (clamp_to_fp16_max, r"large features.*differ from the fp32 model's by up to"),
        (nan_to_num, r"large features"),
        (scaled_squares, r"padded with two rows of zeros.*not finite.*2 rows: \[2, 3\]"),
        (f_normalize, r"padded with two rows of zeros.*not finite"),
        (autocast_off_everywhere, r"model.proj ran in torch.float32, not fp16"),
        (head_in_fp32_too, r"model.head ran in torch.float32, not fp16"),
        (bf16_region, r"ran in torch.bfloat16, not fp16.*exercise keeps fp16"),
        (model_half, r"converted the model's parameters \(proj.weight, head.weight, head.bias\)"),
        (lambda model, x: model(x)[0], r"expected the model's scores, a tensor of shape \(6, 4\)"),
        (lambda model, x: model.head(torch.relu(x)), r"never ran model.proj"),
    ],
)
def test_fp16_trap_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-fp16-trap", wrong)


# --- inference --------------------------------------------------------------------------------------------


def predict_probabilities(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        logits = model(x)
    return torch.softmax(logits.float(), dim=-1)


def with_inference_mode(model, x, device_type, dtype):
    with torch.inference_mode(), torch.autocast(device_type, dtype=dtype):
        return F.softmax(model(x), dim=-1, dtype=torch.float32)  # the softmax computes in fp32


@torch.no_grad()
def decorated(model, x, device_type, dtype):
    with torch.autocast(device_type, dtype=dtype):
        return model.forward(x).float().softmax(-1)


def grad_disabled(model, x, device_type, dtype):
    with torch.set_grad_enabled(False), torch.autocast(device_type, dtype=dtype):
        logits = model(x)
    return logits.float().softmax(-1)


def eval_and_back(model, x, device_type, dtype):  # sets eval mode, then restores the mode it found
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
            logits = model(x)
    finally:
        model.train(was_training)
    return torch.softmax(logits.float(), dim=-1)


@pytest.mark.parametrize(
    "answer", [predict_probabilities, with_inference_mode, decorated, grad_disabled, eval_and_back]
)
def test_inference_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-inference", answer)
    assert capsys.readouterr().err == ""


def detached_afterwards(model, x, device_type, dtype):  # used to pass: the graph is built, then dropped
    with torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=-1).detach()


def no_grad_missing(model, x, device_type, dtype):
    with torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=-1)


def no_autocast(model, x, device_type, dtype):
    with torch.no_grad():
        return torch.softmax(model(x), dim=-1)


def default_dtype(model, x, device_type, dtype):  # bf16 on CPU whatever was asked
    with torch.no_grad(), torch.autocast(device_type):
        return torch.softmax(model(x).float(), dim=-1)


def low_precision_softmax_converted(model, x, device_type, dtype):  # used to say "not probabilities"
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x), dim=-1).float()


def low_precision_probs(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x), dim=-1)


def frozen_parameters(model, x, device_type, dtype):
    model.requires_grad_(False)
    with torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=-1)


def cast_model(model, x, device_type, dtype):
    with torch.no_grad():
        return torch.softmax(model.to(dtype)(x.to(dtype)).float(), dim=-1)


def logits_only(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return model(x).float()


def over_the_batch(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=0)


def log_probabilities(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.log_softmax(model(x).float(), dim=-1)


def left_in_eval(model, x, device_type, dtype):  # used to pass: the model stays in eval mode
    model.eval()
    return predict_probabilities(model, x, device_type, dtype)


def eval_then_train(model, x, device_type, dtype):  # restores training mode, not the mode it found
    model.eval()
    probs = predict_probabilities(model, x, device_type, dtype)
    model.train()
    return probs


def first_layer_eval(model, x, device_type, dtype):  # a submodule's mode counts too
    model[0].eval()
    return predict_probabilities(model, x, device_type, dtype)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            left_in_eval,
            r"dtype=torch.bfloat16 the model was in training mode and your function left the model "
            r"itself and 3 submodules \(0, 1, 2\) in eval mode",
        ),
        (
            eval_then_train,
            r"dtype=torch.float16 the model was in eval mode and your function left the model "
            r"itself and 3 submodules \(0, 1, 2\) in training mode",
        ),
        (first_layer_eval, r"dtype=torch.bfloat16 .* left 1 submodule \(0\) in eval mode"),
        (detached_afterwards, "autograd was recording during the forward pass.*detached afterwards"),
        (no_grad_missing, "requires grad"),
        (no_autocast, "did not run under CPU autocast"),
        (
            default_dtype,
            r"dtype=torch.float16 the model ran under torch.bfloat16 autocast, not the torch.float16",
        ),
        (
            low_precision_softmax_converted,
            r"the softmax ran in torch.bfloat16 and only its result was converted to fp32.*rows sum to 1 only",
        ),
        (low_precision_probs, "probabilities are torch.bfloat16, not fp32"),
        (frozen_parameters, "changed the model's parameters"),
        (cast_model, "changed the model's parameters"),
        (logits_only, "do not sum to 1"),
        (over_the_batch, "columns sum to 1"),
        (log_probabilities, "log-probabilities"),
        (lambda m, x, d, t: predict_probabilities(m, x, d, t)[0], r"expected a \(5, 4\) tensor"),
        (lambda m, x, d, t: torch.full((5, 4), 0.25), "never ran the model"),
    ],
)
def test_inference_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-inference", wrong)


def test_inference_says_how_to_restore_the_mode() -> None:
    """The prompt says "without changing the model": an answer that leaves it in eval mode is told so,
    and how to put the mode back."""
    with pytest.raises(ExerciseFailed) as err:
        check(f"{SLUG}-inference", left_in_eval)
    text = str(err.value)
    assert "leave the model as it found it" in text
    assert "note model.training first and restore it with model.train(that value)" in text


# --- custom-fwd -----------------------------------------------------------------------------------------------


def make_function(cast_inputs=torch.float32, backward_factor=2.0, unsqueeze=True):
    class SumOfSquares(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu", cast_inputs=cast_inputs)
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum(dim=-1)

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return backward_factor * x * (grad.unsqueeze(-1) if unsqueeze else grad)

    return SumOfSquares.apply


def make_function_casting_by_hand():
    """A valid alternative: forward casts its input itself (mul and sum are on no autocast list)."""

    class SumOfSquares(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x32 = x.float()
            ctx.save_for_backward(x32)
            return x32.pow(2).sum(dim=-1)

        @staticmethod
        def backward(ctx, grad):
            (x32,) = ctx.saved_tensors
            return 2 * x32 * grad[..., None]  # fp32; autograd converts it back to x's dtype

    return SumOfSquares.apply


@pytest.mark.parametrize("answer", [make_function, make_function_casting_by_hand])
def test_custom_fwd_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-custom-fwd", answer)
    assert capsys.readouterr().err == ""


def make_function_without_dim():
    class SumOfSquares(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    return SumOfSquares.apply


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda: make_function(cast_inputs=None), "did not run in fp32"),
        (lambda: make_function(backward_factor=1.0), "gradient is wrong"),
        (lambda: make_function(unsqueeze=False), "backward raised RuntimeError"),
        (lambda: lambda x: (x.float() ** 2).sum(-1), "apply method"),
        (lambda: make_function(cast_inputs=torch.bfloat16), "did not run in fp32"),
        (make_function_without_dim, r"expected one sum per row, shape \(3,\)"),
    ],
)
def test_custom_fwd_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-custom-fwd", wrong)


# --- predict the x-ray ------------------------------------------------------------------------------------

XRAY_ROWS = [
    "embed: embedding",
    "norm: layer_norm",
    "mlp: linear",
    "XRayProbe: relu",
    "XRayProbe: add",
    "XRayProbe: softmax",
    "XRayProbe: matmul",
    "XRayProbe: softmax",
    "XRayProbe: mul",
    "XRayProbe: matmul",
    "XRayProbe: mean",
    "head: linear",
    "(outside the model): cross_entropy",
]
XRAY_ANSWER = [F32, F32, BF16, BF16, F32, F32, BF16, BF16, F32, BF16, BF16, BF16, F32]


def test_xray_probe_rows_and_answer_are_what_torch_records() -> None:
    from mpcourse import xray
    from mpcourse.exercises.autocast import xray_probe, xray_probe_rows

    assert xray_probe_rows() == XRAY_ROWS
    scan = xray_probe()
    assert list(scan.table["_output"]) == XRAY_ANSWER
    assert xray.check_against_docs(scan).empty  # the answer is also what PyTorch's documented CPU lists say


def test_xray_predict_accepts_the_answer_as_a_list_or_a_tuple(capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-xray-predict", lambda: list(XRAY_ANSWER))
    check(f"{SLUG}-xray-predict", lambda: tuple(XRAY_ANSWER))
    assert capsys.readouterr().err == ""


def _with(changes: dict[int, torch.dtype]) -> list[torch.dtype]:
    answer = list(XRAY_ANSWER)
    for i, dtype in changes.items():
        answer[i] = dtype
    return answer


@pytest.mark.parametrize(
    "prediction, message",
    [
        (
            _with({5: BF16}),
            r"op 6, XRayProbe: softmax.*no CPU autocast list.*float32",
        ),  # softmax of the fp32 stream in bf16
        (
            _with({7: F32}),
            r"1 of 13 predictions is wrong.*op 8, XRayProbe: softmax.*CUDA softmax is on the fp32 list",
        ),  # CUDA's rule applied on CPU
        (_with({2: F32}), r"op 3, mlp: linear.*low-precision list"),  # linear left in fp32
        (_with({11: F32}), r"op 12, head: linear.*low-precision list"),
        (_with({4: BF16}), r"op 5, XRayProbe: add.*type promotion"),  # the residual add in bf16
        (
            _with({6: F32, 9: F32}),
            r"2 of 13 predictions are wrong.*op 7, XRayProbe: matmul.*low-precision list",
        ),  # matmuls of fp32 inputs kept fp32
        (_with({0: BF16}), r"op 1, embed: embedding.*no CPU autocast list"),
        (_with({12: BF16}), r"op 13, \(outside the model\): cross_entropy.*fp32 list"),
        (_with({1: BF16}), r"op 2, norm: layer_norm.*no CPU autocast list"),  # the norm in bf16
        (
            _with({7: F32, 10: F32}),
            r"2 of 13.*op 8, XRayProbe: softmax.*CUDA",
        ),  # CUDA's habit: softmax and reductions in fp32
        ([BF16] * 13, "for every op"),
        ([F32] * 13, "for every op"),
    ],
)
def test_xray_predict_rejects_realistic_mistakes(prediction, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-xray-predict", lambda: prediction)


def test_xray_predict_rejects_malformed_answers() -> None:
    with pytest.raises(ExerciseFailed, match="expected a list of 13 dtypes"):
        check(f"{SLUG}-xray-predict", lambda: dict(enumerate(XRAY_ANSWER)))
    with pytest.raises(ExerciseFailed, match="the x-ray records 13 ops"):
        check(f"{SLUG}-xray-predict", lambda: XRAY_ANSWER[:-1])
    with pytest.raises(ExerciseFailed, match="not a torch dtype"):
        check(f"{SLUG}-xray-predict", lambda: ["float32"] + XRAY_ANSWER[1:])


# --- cache-count -----------------------------------------------------------------------------------------


def casts_closed_form(uses, regions, cache, trainable):
    per_region = 1 + 2 * (1 if cache and trainable else uses)  # the fp32 input, then weight and bias
    return regions * per_region


def casts_by_simulation(uses, regions, cache, trainable):  # walks the uses, as autocast does
    casts = 0
    for _ in range(regions):
        cached, activation = set(), "fp32"
        for _ in range(uses):
            if activation == "fp32":
                casts, activation = casts + 1, "bf16"
            for name in ("weight", "bias"):
                if name not in cached:
                    casts += 1
                    if cache and trainable:
                        cached.add(name)
    return casts


def casts_as_float(uses, regions, cache, trainable):
    return float(casts_closed_form(uses, regions, cache, trainable))


def casts_as_numpy(uses, regions, cache, trainable):
    return np.int64(casts_closed_form(uses, regions, cache, trainable))


def test_cache_count_answers_match_what_autocast_does() -> None:
    for case in _CACHE_CASES:
        assert casts_closed_form(*case) == casts_by_simulation(*case) == measured_casts(*case), case


@pytest.mark.parametrize("answer", [casts_closed_form, casts_by_simulation, casts_as_float, casts_as_numpy])
def test_cache_count_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check(f"{SLUG}-cache-count", answer)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda u, r, c, t: r * 2 * (1 if c and t else u), "no cast of the input"),
        (lambda u, r, c, t: r * (u + 2 * (1 if c and t else u)), "cast the input at every use"),
        (lambda u, r, c, t: (r + 2) if c and t else r * (1 + 2 * u), "kept the cache across regions"),
        (lambda u, r, c, t: r * (1 + 2 * (1 if c else u)), "cached frozen parameters"),
        (lambda u, r, c, t: r * (1 + (1 if c and t else u)), "weight but not the bias"),
        (lambda u, r, c, t: r * (1 + 2 * u), "as if the cache never helped"),
        (
            lambda u, r, c, t: 1 + 2 * (1 if c and t else u),
            r"wrong\. The first: .*regions=2",
        ),  # one region only
        (lambda u, r, c, t: 3, r"counts are wrong\. The first"),
    ],
)
def test_cache_count_rejects_realistic_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-cache-count", wrong)


@pytest.mark.parametrize(
    "malformed", [lambda u, r, c, t: "3", lambda u, r, c, t: 2.5, lambda u, r, c, t: True]
)
def test_cache_count_rejects_answers_that_are_not_counts(malformed) -> None:
    with pytest.raises(ExerciseFailed, match="expected a whole number of casts"):
        check(f"{SLUG}-cache-count", malformed)


# --- hints switched off -------------------------------------------------------------------------------------


def test_with_hints_off_a_failure_says_only_what_was_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_HINTS", "off")
    with pytest.raises(ExerciseFailed) as caught:
        check(f"{SLUG}-inference", detached_afterwards)
    assert "Hint" not in str(caught.value) and "detached afterwards" in str(caught.value)
