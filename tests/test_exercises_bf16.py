"""The checks of chapter bf16: correct answers, by several methods, pass; realistic mistakes fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

BF16 = formats.BF16


# ---- rounding fp32 to bf16 on the bit pattern ------------------------------------------------------


def to_bf16_reference(x: torch.Tensor) -> torch.Tensor:
    bits = x.contiguous().view(torch.int32)
    last_kept = (bits >> 16) & 1
    rounded = (bits + 0x7FFF + last_kept) & -65536
    return rounded.view(torch.float32).to(torch.bfloat16)


def to_bf16_by_comparison(x: torch.Tensor) -> torch.Tensor:
    """Another right method: compare the low 16 bits with half, and break ties on the last kept bit."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    top, low = bits >> 16, bits & 0xFFFF
    up = (low > 0x8000) | ((low == 0x8000) & (top % 2 == 1))
    top = top + up.to(torch.int64)
    return (top << 16).to(torch.uint32).view(torch.int32).view(torch.float32).to(torch.bfloat16)


def test_round_bits_accepts_the_reference_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("bf16-round-bits", to_bf16_reference)
    out = capsys.readouterr()
    assert "correct" in out.out and not out.err


def test_round_bits_accepts_another_method() -> None:
    check("bf16-round-bits", to_bf16_by_comparison)


def _round_bits_wrong(variant: str):
    def fn(x: torch.Tensor) -> torch.Tensor:
        bits = x.contiguous().view(torch.int32)
        if variant == "truncate":
            rounded = bits & -65536
        elif variant == "half-up":  # ties away from zero
            rounded = (bits + 0x8000) & -65536
        elif variant == "ties-down":
            rounded = (bits + 0x7FFF) & -65536
        elif variant == "wrong-bit":  # ties decided by bit 15 instead of bit 16
            rounded = (bits + 0x7FFF + ((bits >> 15) & 1)) & -65536
        else:
            raise AssertionError(variant)
        return rounded.view(torch.float32).to(torch.bfloat16)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [("truncate", "truncates"), ("half-up", "halfway"), ("ties-down", "halfway"), ("wrong-bit", "halfway")],
)
def test_round_bits_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-round-bits", _round_bits_wrong(variant))


def test_round_bits_refuses_a_library_rounding() -> None:
    with pytest.raises(ExerciseFailed, match="library round"):
        check("bf16-round-bits", lambda x: x.to(torch.bfloat16))
    with pytest.raises(ExerciseFailed, match="library round"):
        check("bf16-round-bits", lambda x: formats.round_tensor(x, BF16).to(torch.bfloat16))


def test_round_bits_rejects_a_wrong_type() -> None:
    with pytest.raises(ExerciseFailed, match="torch.bfloat16 tensor"):
        check("bf16-round-bits", lambda x: (x.view(torch.int32) & -65536).view(torch.float32))


# ---- the gap between neighbouring bf16 numbers -----------------------------------------------------


def gap_by_log2(x: np.ndarray) -> np.ndarray:
    magnitude = np.maximum(np.abs(x), 2.0**-126)  # subnormals and zero share the smallest normal's gap
    return np.exp2(np.floor(np.log2(magnitude)) - 7)


def gap_by_frexp(x: np.ndarray) -> np.ndarray:
    _, e = np.frexp(np.maximum(np.abs(x), 2.0**-126))  # m * 2^e, m in [0.5, 1): the binade is e - 1
    return np.ldexp(1.0, e - 1 - 7)


def gap_by_bits(x: np.ndarray) -> np.ndarray:
    biased = (np.abs(x).astype(np.float32).view(np.uint32) >> 23).astype(np.int64)
    return np.exp2(np.maximum(biased, 1) - 127 - 7.0)


@pytest.mark.parametrize("fn", [gap_by_log2, gap_by_frexp, gap_by_bits])
def test_gap_accepts_correct_methods(fn, capsys: pytest.CaptureFixture[str]) -> None:
    check("bf16-gap", fn)
    assert "correct" in capsys.readouterr().out


def test_gap_accepts_a_torch_answer() -> None:
    check("bf16-gap", lambda x: torch.from_numpy(gap_by_log2(x)))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda x: BF16.eps * np.abs(x), "not powers of two"),  # relative epsilon, not the gap
        (lambda x: gap_by_log2(x) / 2, "factor of 0.5"),  # 8 bits counted instead of 7
        (
            lambda x: np.ldexp(1.0, np.maximum(np.frexp(np.abs(x))[1], -126) - 7),
            "factor of 2",
        ),  # frexp off by one
        (lambda x: np.exp2(np.floor(np.log2(np.abs(x) + 1e-300)) - 7), "smallest normal"),  # no subnormals
        (lambda x: np.exp2(np.ceil(np.log2(np.abs(x) + 1e-300)) - 7), "powers of two|binade"),  # ceil
        (lambda x: BF16.spacing(x), "computes the answer for you"),
    ],
)
def test_gap_rejects_realistic_mistakes(fn, message: str) -> None:
    with np.errstate(divide="ignore"), pytest.raises(ExerciseFailed, match=message):
        check("bf16-gap", fn)


# ---- which autocast dtype a GPU gets ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda cc: torch.bfloat16 if cc >= (8, 0) else torch.float16,
        lambda cc: torch.bfloat16 if cc[0] >= 8 else torch.float16,
        lambda cc: torch.bfloat16 if 10 * cc[0] + cc[1] >= 80 else torch.float16,
    ],
)
def test_autocast_dtype_accepts_correct_answers(fn, capsys: pytest.CaptureFixture[str]) -> None:
    check("bf16-autocast-dtype", fn)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda cc: torch.bfloat16, "for every GPU"),  # what is_bf16_supported() suggests
        (lambda cc: torch.bfloat16 if cc >= (7, 5) else torch.float16, r"\(7, 5\) \(T4\)"),  # the T4 trap
        (lambda cc: torch.bfloat16 if cc[0] >= 9 else torch.float16, r"\(8, 0\) \(A100\)"),  # Hopper only
        (lambda cc: torch.bfloat16 if cc[1] == 0 and cc[0] >= 8 else torch.float16, r"\(8, 6\)"),
        (lambda cc: "bf16" if cc >= (8, 0) else "fp16", "torch.dtype"),
    ],
)
def test_autocast_dtype_rejects_realistic_mistakes(fn, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-autocast-dtype", fn)


# ---- a layer norm that a large mean does not break -------------------------------------------------


def norm_two_pass(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps)


def norm_var_mean(x: torch.Tensor, eps: float) -> torch.Tensor:
    variance, mean = torch.var_mean(x.float(), -1, correction=0, keepdim=True)
    return (x.float() - mean) * torch.rsqrt(variance + eps)


def norm_welford(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    mean = torch.zeros(x.shape[:-1])
    m2 = torch.zeros(x.shape[:-1])
    for k in range(x.shape[-1]):
        delta = x[..., k] - mean
        mean = mean + delta / (k + 1)
        m2 = m2 + delta * (x[..., k] - mean)
    variance = (m2 / x.shape[-1]).unsqueeze(-1)
    return (x - mean.unsqueeze(-1)) / torch.sqrt(variance + eps)


def norm_float64(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    centred = x - x.mean(-1, keepdim=True)
    return (centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)).float()


@pytest.mark.parametrize("fn", [norm_two_pass, norm_var_mean, norm_welford, norm_float64])
def test_stable_norm_accepts_correct_methods(fn, capsys: pytest.CaptureFixture[str]) -> None:
    check("bf16-stable-norm", fn)
    assert "correct" in capsys.readouterr().out


def test_stable_norm_accepts_a_float64_output() -> None:
    check("bf16-stable-norm", lambda x, eps: norm_float64(x, eps).double())


def _norm_wrong(variant: str):
    def fn(x: torch.Tensor, eps: float) -> torch.Tensor:
        if variant == "bf16-output":  # everything in bf16, as the input came
            mean = x.mean(-1, keepdim=True)
            return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
        if variant == "bf16-arithmetic":  # the same, converted at the end
            mean = x.mean(-1, keepdim=True)
            return ((x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)).float()
        if variant == "bf16-mean":  # the mean of the bf16 tensor (bf16), the rest in fp32
            mean = x.mean(-1, keepdim=True).float()
            x = x.float()
            return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
        if variant == "one-pass-fp32":  # E[x^2] - E[x]^2, in fp32
            x = x.float()
            mean = x.mean(-1, keepdim=True)
            return (x - mean) / torch.sqrt((x * x).mean(-1, keepdim=True) - mean**2 + eps)
        if variant == "one-pass-bf16":  # E[x^2] - E[x]^2, in bf16
            mean = x.mean(-1, keepdim=True)
            return ((x - mean) / torch.sqrt((x * x).mean(-1, keepdim=True) - mean**2 + eps)).float()
        x = x.float()
        mean = x.mean(-1, keepdim=True)
        biased = ((x - mean) ** 2).mean(-1, keepdim=True)
        if variant == "no-eps":
            return (x - mean) / torch.sqrt(biased)
        if variant == "eps-outside":
            return (x - mean) / (torch.sqrt(biased) + eps)
        if variant == "unbiased":
            return (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + eps)
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("bf16-output", "your output is torch.bfloat16"),
        ("bf16-arithmetic", "rounded on the way"),
        ("bf16-mean", "mean you subtract is off"),
        ("one-pass-fp32", "cancellation"),
        ("one-pass-bf16", "negative or zero|rounded on the way"),
        ("no-eps", "all equal"),
        ("eps-outside", "as large as eps"),
        ("unbiased", r"sqrt\(63/64\)"),
    ],
)
def test_stable_norm_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-stable-norm", _norm_wrong(variant))


def test_stable_norm_refuses_layer_norm() -> None:
    with pytest.raises(ExerciseFailed, match="computes the statistics for you"):
        check(
            "bf16-stable-norm",
            lambda x, eps: torch.nn.functional.layer_norm(x.float(), x.shape[-1:], eps=eps),
        )
    with pytest.raises(ExerciseFailed, match="computes the statistics for you"):
        check("bf16-stable-norm", lambda x, eps: torch.nn.LayerNorm(x.shape[-1], eps, False)(x.float()))


def test_stable_norm_rejects_a_wrong_shape() -> None:
    with pytest.raises(ExerciseFailed, match="shape"):
        check("bf16-stable-norm", lambda x, eps: norm_two_pass(x, eps).mean(-1))
