"""mpcourse.train.train_step: the mixed-precision step, checked against plain PyTorch, line by line."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.loss_scaling import DynamicLossScaler, StaticLossScaler
from mpcourse.train import StepResult, train_step


def model_and_batch(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.randn(32, 8), torch.randint(0, 4, (32,))


def infinite_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss whose gradients are all inf or NaN: what an fp16 overflow does to a step."""
    return F.cross_entropy(logits, y) * math.inf


def grad_norm(params) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_without_a_scaler_it_is_the_plain_pytorch_step() -> None:
    for dtype in (None, torch.bfloat16):
        model, x, y = model_and_batch()
        reference = copy.deepcopy(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
        for _ in range(3):
            result = train_step(model, x, y, F.cross_entropy, opt, autocast_dtype=dtype)
            ref_opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                ref_logits = reference(x)
                ref_loss = F.cross_entropy(ref_logits, y)
            ref_loss.backward()
            ref_opt.step()
        assert isinstance(result, StepResult) and not result.skipped and math.isnan(result.scale)
        assert torch.equal(result.loss, ref_loss) and torch.equal(result.logits, ref_logits)
        assert result.logits.dtype == (dtype or torch.float32) and result.loss.dtype == torch.float32
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_gradients_are_those_of_this_batch_and_stay_for_inspection() -> None:
    model, x, y = model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, x, y, F.cross_entropy, opt, autocast_dtype=None)
    first = [p.grad.clone() for p in model.parameters()]
    train_step(model, x, y, F.cross_entropy, opt, autocast_dtype=None)  # lr 0: same weights, same gradients
    assert all(
        torch.equal(p.grad, g) for p, g in zip(model.parameters(), first)
    )  # not accumulated: 1x, not 2x


@pytest.mark.parametrize(
    "make_scaler",
    [
        lambda: torch.amp.GradScaler("cpu", init_scale=2.0**10),
        lambda: DynamicLossScaler(init_scale=2.0**10),
        lambda: StaticLossScaler(2.0**10),
    ],
    ids=["GradScaler", "DynamicLossScaler", "StaticLossScaler"],
)
def test_an_inf_gradient_skips_the_step_and_leaves_the_weights_alone(make_scaler) -> None:
    model, x, y = model_and_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = make_scaler()
    before = params_of(model)
    result = train_step(model, x, y, infinite_loss, opt, autocast_dtype=torch.float16, scaler=scaler)
    assert result.skipped
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.state  # optimizer.step() never ran: AdamW would have created its moments
    static = isinstance(scaler, StaticLossScaler)
    assert result.scale == (2.0**10 if static else 2.0**9)  # a dynamic scaler backs off
    # the next, clean step is taken, at the lowered scale
    result = train_step(model, x, y, F.cross_entropy, opt, autocast_dtype=torch.float16, scaler=scaler)
    assert not result.skipped and opt.state
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_scaled_step_equals_the_unscaled_one_in_fp32() -> None:
    """Scaling by a power of two and unscaling again is exact: the same update as without a scaler."""
    model, x, y = model_and_batch()
    reference = copy.deepcopy(model)
    scaled = train_step(
        model,
        x,
        y,
        F.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=0.1),
        autocast_dtype=None,
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12),
    )
    plain = train_step(
        reference, x, y, F.cross_entropy, torch.optim.SGD(reference.parameters(), lr=0.1), autocast_dtype=None
    )
    assert not scaled.skipped and scaled.scale == 2.0**12 and torch.equal(scaled.loss, plain.loss)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_clipping_sees_the_unscaled_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = model_and_batch()
    reference = copy.deepcopy(model)
    ref_loss = F.cross_entropy(reference(x), y)
    ref_loss.backward()
    true_norm = grad_norm(reference.parameters())
    max_norm = true_norm / 4  # so that clipping has work to do

    seen: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen.append(grad_norm(parameters))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(
        model,
        x,
        y,
        F.cross_entropy,
        opt,
        autocast_dtype=None,
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16),
        grad_clip=max_norm,
    )
    assert len(seen) == 1 and math.isclose(seen[0], true_norm, rel_tol=1e-6)  # not 2^16 times the norm
    # and the gradients the optimizer used were clipped to max_norm, not to max_norm / 2^16
    used = grad_norm(model.parameters())
    assert math.isclose(used, max_norm, rel_tol=1e-5)
    clip(reference.parameters(), max_norm)
    torch.optim.SGD(reference.parameters(), lr=1.0).step()
    assert all(
        torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(model.parameters(), reference.parameters())
    )


def test_clipping_without_a_scaler() -> None:
    model, x, y = model_and_batch()
    train_step(
        model,
        x,
        y,
        F.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=0.0),
        autocast_dtype=None,
        grad_clip=1e-3,
    )
    assert math.isclose(grad_norm(model.parameters()), 1e-3, rel_tol=1e-5)


def test_forward_context_wraps_the_forward_pass_only() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def context():
        events.append(f"enter (autocast {torch.is_autocast_enabled('cpu')})")
        yield
        events.append("exit")

    model, x, y = model_and_batch()
    model[0].register_forward_hook(
        lambda *_: events.append(f"forward (autocast {torch.is_autocast_enabled('cpu')})")
    )
    model[0].weight.register_hook(lambda g: events.append("backward"))
    train_step(
        model,
        x,
        y,
        F.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=0.1),
        autocast_dtype=torch.bfloat16,
        forward_context=context(),
    )
    assert events == ["enter (autocast False)", "forward (autocast True)", "exit", "backward"]


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            dict(autocast_dtype=torch.float64),
            ValueError,
            "autocast_dtype must be None, torch.float16 or torch.bfloat16",
        ),
        (dict(grad_clip=0.0), ValueError, "grad_clip must be a positive, finite"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip must be a positive, finite"),
        (dict(grad_clip=math.inf), ValueError, "grad_clip must be a positive, finite"),
        (dict(grad_clip=math.nan), ValueError, "grad_clip must be a positive, finite"),
        (dict(grad_clip=True), ValueError, "grad_clip must be a positive, finite"),
        (dict(grad_clip="1"), ValueError, "grad_clip must be a positive, finite"),
        (dict(scaler=object()), TypeError, "lacks scale, unscale_, step, update, get_scale"),
        (dict(optimizer="adamw"), TypeError, "optimizer must be a torch.optim.Optimizer"),
        (dict(model="mlp"), TypeError, "model must be a module"),
        (dict(loss_fn=None), TypeError, "loss_fn must be a function"),
        (dict(x=[1.0, 2.0]), TypeError, "x must be a tensor"),
    ],
)
def test_bad_arguments_are_named(change: dict, error: type, message: str) -> None:
    model, x, y = model_and_batch()
    args = (
        dict(
            model=model,
            x=x,
            y=y,
            loss_fn=F.cross_entropy,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            autocast_dtype=None,
        )
        | change
    )
    before = params_of(model)
    with pytest.raises(error, match=message):
        train_step(**args)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # nothing happened


def test_calling_it_inside_autocast_is_refused() -> None:
    model, x, y = model_and_batch()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(RuntimeError, match="called inside torch.autocast; call it outside"),
    ):
        train_step(
            model,
            x,
            y,
            F.cross_entropy,
            torch.optim.SGD(model.parameters(), lr=0.1),
            autocast_dtype=torch.bfloat16,
        )
