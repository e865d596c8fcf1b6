"""Forward overflow: fp16 attention logits above 65504 turn the loss into NaN, and a scaler cannot help."""

from __future__ import annotations

import math

import pytest
import torch

from mpcourse.forward_overflow import FIXES, TinyAttention, overflow_data
from mpcourse.loss_scaling import ScaleWatch


def _train(fix: str, dtype: torch.dtype, steps: int = 12) -> tuple[list[float], int, float]:
    x, y = overflow_data(256)
    torch.manual_seed(0)
    model = TinyAttention(16, 64, 4, fix)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    losses, skipped = [], 0
    for step in range(steps):
        idx = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        losses.append(loss.item())
    return losses, skipped, scaler.get_scale()


def test_the_data_makes_fp32_logits_above_fp16_max() -> None:
    x, y = overflow_data(64)
    assert x.shape == (64, 8, 16) and y.shape == (64,) and y.dtype == torch.int64
    torch.manual_seed(0)
    model = TinyAttention(16, 64, 4)
    with torch.no_grad():
        model(x)
    assert model.last_logit_max > torch.finfo(torch.float16).max


def test_plain_fp16_logits_overflow_and_every_step_is_skipped() -> None:
    losses, skipped, scale = _train("none", torch.float16)
    assert all(math.isnan(v) for v in losses)
    assert skipped == len(losses)
    assert scale == 2.0**16 * 0.5 ** len(losses)


@pytest.mark.parametrize("fix", [f for f in FIXES if f != "none"])
def test_each_fix_keeps_fp16_training_finite(fix: str) -> None:
    losses, skipped, scale = _train(fix, torch.float16)
    assert all(math.isfinite(v) for v in losses)
    assert skipped < len(losses) and scale >= 1.0
    assert losses[-1] < losses[0]


def test_bf16_needs_no_fix() -> None:
    losses, _, _ = _train("none", torch.bfloat16)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_scaled_queries_and_qk_norm_bound_the_logits() -> None:
    x, _ = overflow_data(32)
    for fix, bound in (("scale_queries", torch.finfo(torch.float16).max), ("qk_norm", 64.0 * 1.01)):
        torch.manual_seed(0)
        model = TinyAttention(16, 64, 4, fix)
        with torch.no_grad():
            model(x)
        assert model.last_logit_max < bound, fix


def test_fp32_logits_are_fp32_under_autocast() -> None:
    x, _ = overflow_data(4)
    model = TinyAttention(16, 8, 2, "fp32_logits")
    with torch.autocast("cpu", dtype=torch.float16):
        assert model.logits(x).dtype == torch.float32
    plain = TinyAttention(16, 8, 2)
    with torch.autocast("cpu", dtype=torch.float16):
        assert plain.logits(x).dtype == torch.float16


def test_a_watch_catches_the_collapse() -> None:
    x, y = overflow_data(64)
    torch.manual_seed(0)
    model = TinyAttention(16, 64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    watch = ScaleWatch(max_drops_in_row=5, warn=False)
    for _ in range(8):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        watch.observe(scaler)
    assert watch.collapsed_at == 6  # the first update already drops: the drops in row count from the second


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fix": "scaled"}, "fix must be one of"),
        ({"d": 0}, "d must be a positive int"),
        ({"classes": 2.5}, "classes must be a positive int"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    args = {"d_in": 4, "d": 4, "classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        TinyAttention(**args)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="batch, positions, features"):
        TinyAttention(4, 4, 2)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="n must be a positive int"):
        overflow_data(0)
    with pytest.raises(ValueError, match="magnitude must be a positive finite number"):
        overflow_data(4, magnitude=math.inf)
