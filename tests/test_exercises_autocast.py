"""The checks of chapter autocast: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse.exercises import ExerciseFailed, check
from mpcourse.exercises.autocast import measured_dtypes

SLUG = "autocast"
F32, BF16 = torch.float32, torch.bfloat16


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


def test_predict_accepts_the_answer() -> None:
    check(f"{SLUG}-predict", lambda: dict(ANSWER))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"softmax(bf16)": F32}, "CUDA's list"),
        ({"add(bf16, fp32)": BF16}, "type promotion"),
        ({"linear(fp32 input, fp32 weight)": F32}, "first thing autocast casts down"),
        ({"cross_entropy(bf16 logits)": BF16}, "losses are on the fp32 list"),
        ({"embedding(int ids, fp32 table)": BF16}, "not on any list"),
        ({"layer_norm(fp32)": BF16}, "layer_norm"),
        ({"cat([bf16, fp32])": BF16}, "widest"),
        ({k: BF16 for k in ANSWER}, "wrong"),  # "everything runs in bf16"
        ({k: F32 for k in ANSWER}, "wrong"),
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


# --- safe-bce -----------------------------------------------------------------------------------------


def test_safe_bce_accepts_the_reference() -> None:
    check(f"{SLUG}-safe-bce", lambda logits, t: F.binary_cross_entropy_with_logits(logits, t))
    check(f"{SLUG}-safe-bce", lambda logits, t: torch.nn.BCEWithLogitsLoss()(logits, t))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda z, t: F.binary_cross_entropy(torch.sigmoid(z), t), "expected"),
        (lambda z, t: torch.nn.BCELoss()(torch.sigmoid(z).float(), t), "expected"),
        (
            lambda z, t: (
                -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
            ),
            "nan|inf|expected",
        ),
        (lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="sum"), "sum over the batch"),
        (lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="none"), "expected the mean"),
        (lambda z, t: F.binary_cross_entropy_with_logits(torch.sigmoid(z), t), "expected"),
        (lambda z, t: F.mse_loss(torch.sigmoid(z), t), "expected"),
    ],
)
def test_safe_bce_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-safe-bce", wrong)


# --- inference --------------------------------------------------------------------------------------------


def predict_probabilities(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=-1)


def test_inference_accepts_the_reference_and_inference_mode() -> None:
    check(f"{SLUG}-inference", predict_probabilities)

    def with_inference_mode(model, x, device_type, dtype):
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype):
            logits = model(x)
        return logits.float().softmax(-1)

    check(f"{SLUG}-inference", with_inference_mode)


def no_grad_missing(model, x, device_type, dtype):
    with torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x).float(), dim=-1)


def no_autocast(model, x, device_type, dtype):
    with torch.no_grad():
        return torch.softmax(model(x), dim=-1)


def low_precision_probs(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return torch.softmax(model(x), dim=-1)


def logits_only(model, x, device_type, dtype):
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return model(x).float()


@pytest.mark.parametrize(
    "wrong, message",
    [
        (no_grad_missing, "requires grad"),
        (no_autocast, "did not run under autocast"),
        (low_precision_probs, "probabilities are torch"),
        (logits_only, "do not sum to 1"),
        (lambda m, x, d, t: predict_probabilities(m, x, d, t)[0], "expected a \\(5, 4\\) tensor"),
    ],
)
def test_inference_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-inference", wrong)


# --- custom-fwd -----------------------------------------------------------------------------------------------


def make_function(cast_inputs=torch.float32, backward_factor=2.0):
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
            return backward_factor * x * grad.unsqueeze(-1)

    return SumOfSquares.apply


def test_custom_fwd_accepts_the_reference() -> None:
    check(f"{SLUG}-custom-fwd", make_function)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda: make_function(cast_inputs=None), "did not run in fp32"),
        (lambda: make_function(backward_factor=1.0), "gradient is wrong"),
        (lambda: lambda x: (x.float() ** 2).sum(-1), "apply method"),
        (lambda: make_function(cast_inputs=torch.bfloat16), "did not run in fp32"),
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


def test_xray_predict_accepts_the_answer() -> None:
    check(f"{SLUG}-xray-predict", lambda: list(XRAY_ANSWER))


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
            r"op 8, XRayProbe: softmax.*CUDA softmax is on the fp32 list",
        ),  # CUDA's rule applied on CPU
        (_with({2: F32}), r"op 3, mlp: linear.*low-precision list"),  # linear left in fp32
        (_with({11: F32}), r"op 12, head: linear.*low-precision list"),
        (_with({4: BF16}), r"op 5, XRayProbe: add.*type promotion"),  # the residual add in bf16
        (
            _with({6: F32, 9: F32}),
            r"2 of 13.*op 7, XRayProbe: matmul.*low-precision list",
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
