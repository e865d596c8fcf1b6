"""The seed's templates on book/code_templates.md: the diffs shown are the files tested, the corrected
programs train, and each error the page lists in the seed's versions happens as described."""

from __future__ import annotations

import copy
import difflib
import math
import re
import runpy
import warnings

import pytest
import torch
from conftest import ROOT
from torch import nn

SNIPPETS = ROOT / "book" / "snippets" / "code_templates"
PAGE = ROOT / "book" / "code_templates.md"
PAIRS = [
    ("seed_b1_fp16.py", "fixed_b1_fp16.py"),
    ("seed_b2_bf16.py", "fixed_b2_bf16.py"),
    ("seed_b3_fp8.py", "fixed_b3_fp8.py"),
]


def diff(seed: str, fixed: str) -> str:
    a = (SNIPPETS / seed).read_text(encoding="utf-8").splitlines()
    b = (SNIPPETS / fixed).read_text(encoding="utf-8").splitlines()
    return "\n".join(difflib.unified_diff(a, b, seed, fixed, n=3, lineterm=""))


def test_the_diffs_on_the_page_are_generated_from_the_snippets() -> None:
    shown = re.findall(
        r"^```diff\n(.*?)\n```$", PAGE.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL
    )
    expected = [diff(*pair) for pair in PAIRS]
    for got, want, pair in zip(shown, expected, PAIRS):
        assert got == want, f"the diff of {pair} on the page is out of date; it should read:\n{want}"
    assert len(shown) == len(PAIRS)


@pytest.mark.parametrize("fixed", [fixed for _, fixed in PAIRS])
def test_the_corrected_program_trains(fixed: str) -> None:
    torch.manual_seed(0)
    ns = runpy.run_path(str(SNIPPETS / fixed), run_name="__main__")
    model, features, labels, device = ns["model"], ns["features"], ns["labels"], ns["device"]
    # The untrained model: the same random draws as the program's (its data first, then the layers).
    torch.manual_seed(0)
    torch.randn(features.shape)
    untrained = copy.deepcopy(model)
    for module in untrained.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()

    def loss(m: nn.Module) -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(m(features.to(device)).float(), labels.to(device)).item()

    assert loss(model) < loss(untrained) - 0.05, (
        f"{fixed}: loss {loss(untrained):.3f} before, {loss(model):.3f} after"
    )


def test_the_seeds_torch_cuda_amp_calls_are_deprecated() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.amp.GradScaler()
        torch.cuda.amp.autocast()
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert any("torch.cuda.amp.GradScaler(args...)` is deprecated" in m for m in messages), messages
    assert any("torch.cuda.amp.autocast(args...)` is deprecated" in m for m in messages), messages


def test_softmax_before_cross_entropy_bounds_the_loss() -> None:
    """With probabilities as its input, cross-entropy cannot go below ln(1 + (C-1)/e), however right."""
    certain = torch.tensor([[100.0, 0, 0, 0, 0]])
    target = torch.tensor([0])
    seed_loss = nn.CrossEntropyLoss()(nn.Softmax(dim=1)(certain), target)
    assert seed_loss.item() == pytest.approx(math.log(1 + 4 / math.e), rel=1e-6)
    assert nn.CrossEntropyLoss()(certain, target).item() < 1e-6
    assert f"{math.log(1 + 4 / math.e):.3f}" in PAGE.read_text(encoding="utf-8")


def test_without_zero_grad_the_gradients_add_up() -> None:
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)
    model(x).sum().backward()
    once = model.weight.grad.clone()
    model(x).sum().backward()
    assert torch.allclose(model.weight.grad, 2 * once)


def test_half_is_fp16_and_the_scaler_refuses_fp16_gradients() -> None:
    model = nn.Linear(4, 2).half()
    assert model.weight.dtype == torch.float16 != torch.bfloat16
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.Adam(model.parameters())
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(torch.randn(3, 4).half()).float().sum()
    scaler.scale(loss).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.step(optimizer)


def test_there_is_no_torch_float8_and_an_fp8_model_does_not_train() -> None:
    assert not hasattr(torch, "float8")
    model = nn.Linear(4, 2).to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="same dtype"):
        model(torch.randn(3, 4).half())  # the seed's inputs.half()
    out = model(torch.randn(3, 4).to(torch.float8_e4m3fn))
    with pytest.raises(NotImplementedError, match="Float8_e4m3fn"):
        out.float().sum().backward()


def test_autocast_does_not_cast_to_fp8() -> None:
    with pytest.warns(UserWarning, match="not supported. Disabling autocast"):
        with torch.autocast("cpu", dtype=torch.float8_e4m3fn):
            assert not torch.is_autocast_enabled("cpu")
