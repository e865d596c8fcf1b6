"""mpcourse.models: shapes, and a clear error for a model that does not fit the data."""

from __future__ import annotations

import pytest
import torch

from mpcourse import data, models


@pytest.fixture(scope="module")
def digits():
    return data.load_images(source="local", verbose=False)


@pytest.fixture(scope="module")
def text():
    return data.load_text(source="local", block_size=16, max_chars=5000, verbose=False)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_image_models_give_one_logit_per_class(digits, kind) -> None:
    x, _ = digits.sample(5, torch.Generator().manual_seed(0))
    assert models.for_data(digits, kind)(x).shape == (5, 10)


def test_char_transformer_is_causal(text) -> None:
    torch.manual_seed(0)
    model = models.for_data(text, width=32, depth=1)
    x, _ = text.sample(2, torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (2, 16, text.num_classes)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % text.num_classes
    # Changing the last character changes no earlier prediction.
    assert torch.allclose(model(changed)[:, :-1], out[:, :-1])
    with pytest.raises(ValueError, match="longer than the model's block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_models_that_do_not_fit_are_explained(digits, text) -> None:
    with pytest.raises(ValueError, match="accepted: 'mlp', 'cnn'"):
        models.for_data(digits, "transformer")
    with pytest.raises(ValueError, match="accepted: 'transformer'"):
        models.for_data(text, "cnn")
    with pytest.raises(TypeError, match="ImageData or TextData"):
        models.for_data(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        models.Block(10, 3)
