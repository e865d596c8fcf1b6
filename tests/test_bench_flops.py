"""mpcourse.bench.flops: FlopCounterMode counts against hand counts, the 6NT rule, MFU."""

from __future__ import annotations

import pytest
import torch

from mpcourse.bench import flops


def test_a_matrix_product_is_2mnk() -> None:
    a, b = torch.randn(24, 40), torch.randn(40, 8)
    assert flops.count_flops(lambda: a @ b) == 2 * 24 * 40 * 8


def test_a_training_step_of_an_mlp_matches_a_hand_count() -> None:
    batch, sizes = 32, (64, 128, 10)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    products = [sizes[i] * sizes[i + 1] for i in range(2)]
    forward = sum(2 * batch * p for p in products)
    weight_grads = forward  # one product per layer, the same size as its forward product
    input_grads = 2 * batch * products[1]  # the first layer's input needs no gradient
    assert flops.count_flops(step) == forward + weight_grads + input_grads
    n_params = sum(p.numel() for p in model.parameters())
    # 6NT counts the first layer's input gradient and the biases too: an upper estimate here.
    assert flops.transformer_flops(n_params, batch) > flops.count_flops(step)
    by_op = flops.flops_by_op(step)
    assert sum(by_op.values()) == flops.count_flops(step) and "aten.mm" in by_op


def test_autocast_does_not_change_the_count() -> None:
    lin, x = torch.nn.Linear(32, 16), torch.randn(8, 32)
    plain = flops.count_flops(lambda: lin(x).sum().backward())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = flops.count_flops(lambda: lin(x).float().sum().backward())
    assert plain == low


def test_mfu() -> None:
    # 6e12 FLOPs in 0.1 s on a 100 TFLOP/s device: 60 TFLOP/s achieved, 60%.
    assert flops.mfu(6e12, 0.1, 100) == pytest.approx(0.6)
    assert flops.transformer_flops(10**9, 1000) == 6 * 10**12
    with pytest.raises(ValueError, match="step_seconds > 0"):
        flops.mfu(1.0, 0.0, 100)
    with pytest.raises(ValueError, match="positive"):
        flops.transformer_flops(0, 10)


def test_attention_flops_count_both_products_forward_and_backward() -> None:
    # Per layer and sequence: Q K^T and A V are each 2 T^2 d forward; backward doubles the forward.
    layers, width, seq, batch = 3, 64, 32, 5
    forward = 2 * (2 * seq * seq * width) * layers * batch
    assert flops.attention_flops(layers, width, seq, tokens=seq * batch) == 3 * forward


def test_attention_flops_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        flops.attention_flops(0, 64, 32, 32)
