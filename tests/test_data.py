"""mpcourse.data: real local datasets through `datasets`, hub fallback, reproducible batches. No network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcourse import data
from mpcourse.datasets import DIGITS


@pytest.fixture(autouse=True)
def ci_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", "ci")


@pytest.fixture(scope="module")
def digits() -> data.ImageData:
    return data.load_images(source="local", verbose=False)


@pytest.fixture(scope="module")
def text() -> data.TextData:
    return data.load_text(source="local", block_size=16, verbose=False)


def test_the_shipped_digits_are_the_uci_test_set(digits: data.ImageData) -> None:
    images, labels = data._digits_arrays()
    assert (images.shape, images.dtype, labels.shape, labels.dtype) == (
        (1797, 8, 8),
        np.float64,
        (1797,),
        np.int64,
    )
    # Pixels are counts of set pixels in 4x4 blocks (0..16); the UCI page gives the test set's classes.
    assert set(np.unique(images)) == set(range(17))
    per_class = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert np.bincount(labels).tolist() == per_class
    assert digits.source == "local" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_eval) == 1797
    # The labels are a permutation of the real labels (the split shuffles, nothing is invented).
    all_labels = torch.cat([digits.y_train, digits.y_eval]).numpy()
    assert np.array_equal(np.sort(all_labels), np.sort(labels))
    # Standardised with the training set's statistics.
    assert abs(digits.x_train.mean().item()) < 1e-5
    assert digits.x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    # The note says where the data came from.
    assert "UCI" in digits.note and "CC BY 4.0" in digits.note and "no network" in digits.note


def test_the_shipped_digits_are_scikit_learns_exactly() -> None:
    """Same arrays as ``load_digits()``, and the same bundle for a seed as when they were read from scikit-learn."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
    raw = sklearn_datasets.load_digits()
    images, labels = data._digits_arrays()
    assert np.array_equal(images, raw.images) and images.dtype == raw.images.dtype
    assert np.array_equal(labels, raw.target) and labels.dtype == raw.target.dtype
    for seed in (0, 3):
        ours = data.load_images(source="local", seed=seed, verbose=False)
        train_idx, eval_idx = data._split(len(raw.target), 0.2, seed)
        theirs = data._to_image_bundle(
            raw.images, raw.target, train_idx, eval_idx, name="digits", source="local", note=""
        )
        for field in ("x_train", "y_train", "x_eval", "y_eval"):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), (seed, field)


def test_the_digits_file_ships_with_its_source_and_licence() -> None:
    readme = (DIGITS.parent / "README.md").read_text(encoding="utf-8")
    assert DIGITS.is_file() and DIGITS.stat().st_size < 100_000
    for fact in (
        "Alpaydin",
        "Kaynak",
        "1998",
        "https://doi.org/10.24432/C50P49",
        "CC BY 4.0",
        "BSD-3-Clause",
    ):
        assert fact in readme, fact


def test_digits_split_is_seeded_and_disjoint() -> None:
    a = data.load_images(source="local", seed=1, verbose=False)
    b = data.load_images(source="local", seed=1, verbose=False)
    c = data.load_images(source="local", seed=2, verbose=False)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_eval, b.y_eval)
    assert not torch.equal(a.y_train, c.y_train)
    train_rows = {tuple(r) for r in a.x_train.flatten(1).tolist()}
    eval_rows = {tuple(r) for r in a.x_eval.flatten(1).tolist()}
    # Distinct images never cross the split (the digits contain a few exact duplicates; allow those).
    assert len(train_rows & eval_rows) <= 5


def test_subsets(capsys: pytest.CaptureFixture[str]) -> None:
    small = data.load_images(source="local", n_train=100, n_eval=50)
    assert (len(small.x_train), len(small.x_eval)) == (100, 50)
    assert "100 training and 50 held-out" in capsys.readouterr().out


def test_auto_source_stays_local_outside_the_full_profile(digits: data.ImageData) -> None:
    assert data.load_images("mnist", verbose=False).source == "local"


def test_hub_failure_falls_back_to_local_data_with_a_note(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(data, "_hub", offline)
    images = data.load_images("mnist", source="hub")
    out = capsys.readouterr().out
    assert images.name == "digits" and images.source == "local"
    assert "could not be reached" in out and "ConnectionError" in out and "'mnist'" in out
    corpus = data.load_text("wikitext2", source="hub", block_size=16)
    assert corpus.source == "local" and "could not be reached" in capsys.readouterr().out


def test_hub_request_for_a_local_only_dataset_says_so(capsys) -> None:
    data.load_images("digits", source="hub")
    assert "no hub version" in capsys.readouterr().out


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: data.load_images("imagenet", source="local"), "accepted: digits, mnist"),
        (lambda: data.load_images(source="internet"), "accepted: auto, hub, local"),
        (lambda: data.load_text("shakespeare", source="local"), "accepted: pydoc, wikitext2"),
        (lambda: data.load_text(source="local", max_chars=50, block_size=32), "too short"),
    ],
)
def test_bad_arguments_name_what_is_accepted(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_image_batches_are_reproducible_from_the_generator(digits: data.ImageData) -> None:
    x1, y1 = digits.sample(32, torch.Generator().manual_seed(5))
    x2, y2 = digits.sample(32, torch.Generator().manual_seed(5))
    x3, _ = digits.sample(32, torch.Generator().manual_seed(6))
    assert x1.shape == (32, 1, 8, 8) and y1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)


def test_image_eval_batches_cover_the_held_out_set_in_order(digits: data.ImageData) -> None:
    batches = list(digits.eval_batches(100))
    assert torch.equal(torch.cat([y for _, y in batches]), digits.y_eval)
    assert sum(len(y) for _, y in digits.eval_batches(100, max_items=150)) == 150


def test_text_is_pythons_documentation(text: data.TextData) -> None:
    from pydoc_data.topics import topics

    assert text.source == "local" and text.items_per_sample == 16
    assert text.num_classes == len(text.vocab) == len(set(text.vocab))
    sample = topics["assert"][:200]
    assert text.decode(text.encode(sample)) == sample
    assert len(text.train_tokens) + len(text.eval_tokens) == len(
        "\n\n".join(topics[k] for k in sorted(topics))
    )


def test_text_targets_are_the_inputs_shifted_by_one(text: data.TextData) -> None:
    x, y = text.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    (ex, ey), *_ = text.eval_batches(4)
    assert torch.equal(ex[:, 1:], ey[:, :-1])
    assert torch.equal(ex.reshape(-1), text.eval_tokens[: 4 * 16])


def test_loss_and_correct_work_for_both_tasks(digits: data.ImageData, text: data.TextData) -> None:
    logits = torch.zeros(4, 10, dtype=torch.bfloat16)
    logits[:, 3] = 1
    targets = torch.tensor([3, 3, 1, 0])
    loss = digits.loss(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), targets).item())
    assert digits.correct(logits, targets) == (2, 4)
    seq_logits = torch.randn(2, 16, text.num_classes)
    seq_targets = torch.randint(text.num_classes, (2, 16))
    assert text.correct(seq_logits, seq_targets)[1] == 32
    assert text.loss(seq_logits, seq_targets).shape == ()


def test_to_moves_every_tensor(digits: data.ImageData, text: data.TextData) -> None:
    assert digits.to("cpu").device.type == "cpu"
    assert text.to("cpu").device.type == "cpu"


# ---- the hub path, without the network: a fake `datasets.Dataset` in place of the download ----------


def _fake_hub(
    images_per_split: dict[str, np.ndarray], labels_per_split: dict[str, np.ndarray], image_col: str
):
    """A stand-in for data._hub: real `datasets.Dataset` objects built in memory, one per split."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def hub(repo, config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict(
            {image_col: list(images_per_split[split]), "label": labels_per_split[split].tolist()}
        )

    return hub, calls


@pytest.mark.parametrize(
    "name, shape, channels",
    [("mnist", (28, 28), 1), ("cifar10", (32, 32, 3), 3)],
)
def test_hub_images_are_converted_without_the_network(
    monkeypatch: pytest.MonkeyPatch, capsys, name, shape, channels
) -> None:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, *shape), dtype=np.uint8) for s, n in (("train", 40), ("test", 12))}
    labels = {s: rng.integers(0, 10, len(images[s])) for s in images}
    repo, image_col, _ = data.IMAGE_DATASETS[name]
    hub, calls = _fake_hub(images, labels, image_col)
    monkeypatch.setattr(data, "_hub", hub)
    bundle = data.load_images(name, source="hub", n_train=30, n_eval=10, seed=3)
    assert [c[2] for c in calls] == ["train", "test"] and all(c[0] == repo for c in calls)
    assert (
        bundle.source == "hub"
        and bundle.name == name
        and f"'{repo}' from the Hugging Face hub" in capsys.readouterr().out
    )
    side = shape[0]
    assert bundle.input_shape == (channels, side, side)  # (H, W) and (H, W, C) both become (C, H, W)
    assert (len(bundle.x_train), len(bundle.x_eval)) == (30, 10)
    # Shuffled with the seed, then cut: the labels are those of real training / test rows, in some order.
    assert set(bundle.y_train.tolist()) <= set(labels["train"].tolist())
    assert set(bundle.y_eval.tolist()) <= set(labels["test"].tolist())
    # Standardised per channel with the training statistics.
    assert bundle.x_train.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
    assert torch.allclose(bundle.x_train.std(dim=(0, 2, 3)), torch.ones(channels), atol=1e-3)
    # The same seed gives the same bundle.
    again = data.load_images(name, source="hub", n_train=30, n_eval=10, seed=3, verbose=False)
    assert torch.equal(again.x_train, bundle.x_train) and torch.equal(again.y_eval, bundle.y_eval)


def test_hub_text_is_read_without_the_network(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    datasets = pytest.importorskip("datasets")
    repo, config, column = data.TEXT_DATASETS["wikitext2"]
    lines = [" = Valkyria Chronicles = \n", " The game began development in 2010 . \n"] * 40

    def hub(r, c, split):
        assert (r, c, split) == (repo, config, "train")
        return datasets.Dataset.from_dict({column: lines})

    monkeypatch.setattr(data, "_hub", hub)
    corpus = data.load_text("wikitext2", source="hub", block_size=8)
    assert corpus.source == "hub" and "from the Hugging Face hub" in capsys.readouterr().out
    assert corpus.decode(torch.cat([corpus.train_tokens, corpus.eval_tokens])) == "".join(lines)


def test_missing_pillow_is_named_not_blamed_on_the_network(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # A real image column that datasets cannot decode without Pillow: PIL_AVAILABLE is forced off, so the
    # test does not depend on whether Pillow happens to be installed.
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    table = pa.table(
        {
            "image": pa.array([{"bytes": b"not decoded", "path": None}] * 4, type=datasets.Image().pa_type),
            "label": pa.array([0, 1, 2, 3], type=pa.int64()),
        }
    )
    monkeypatch.setattr(datasets.config, "PIL_AVAILABLE", False)
    monkeypatch.setattr(
        data,
        "_hub",
        lambda repo, config, split: datasets.Dataset(table, info=datasets.DatasetInfo(features=features)),
    )
    images = data.load_images("mnist", source="hub")
    out = capsys.readouterr().out
    assert images.source == "local"
    assert "needs the package 'Pillow'" in out and "pip install Pillow" in out and "ImportError" in out
    assert "could not be reached" not in out


@pytest.mark.parametrize(
    "error, expected",
    [
        (ModuleNotFoundError("No module named 'datasets'", name="datasets"), "needs the package 'datasets'"),
        (ModuleNotFoundError("No module named 'PIL'", name="PIL"), "needs the package 'Pillow'"),
        (TimeoutError("timed out"), "could not be reached (TimeoutError"),
        (ValueError("unexpected column"), "from the hub failed (ValueError"),
    ],
)
def test_hub_failures_are_told_apart(
    monkeypatch: pytest.MonkeyPatch, capsys, error: Exception, expected: str
) -> None:
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(data, "_hub", failing)
    assert data.load_images("fashion_mnist", source="hub").source == "local"
    out = capsys.readouterr().out
    assert expected in out
    if not isinstance(error, OSError):  # a failure that is not the network's names the dataset it was loading
        assert "'zalando-datasets/fashion_mnist'" in out
