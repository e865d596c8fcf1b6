"""Small real datasets for the course's training runs, through the ``datasets`` library.

Every training experiment in the course needs data that is real (so curves mean something), small
(so a chapter runs in seconds on two CPU cores) and always available (CI and the website build have
no network). So each loader has two sources, chosen by the ``source`` argument:

- ``"hub"``: the Hugging Face hub through :func:`datasets.load_dataset` (MNIST, Fashion-MNIST,
  CIFAR-10; WikiText-2 for text). Needs the network; used on Colab and GPU machines.
- ``"local"``: a real dataset read from disk without the network (and without importing
  ``datasets``, which takes seconds). Images: the 1,797 8x8 handwritten digits of the UCI
  repository (Alpaydin and Kaynak, 1998; CC BY 4.0), which this package ships in
  ``mpcourse/datasets/digits.npz`` (a copy of scikit-learn's ``load_digits()``; the README there
  gives source and licence). Text: the English reference text of Python's own documentation that
  the standard library ships in ``pydoc_data.topics`` (the text behind ``help("assert")`` and
  friends), for a character-level language model.

``source="auto"`` (the default) uses the hub only in the ``full`` profile (a GPU machine) and falls
back to the local dataset, with a note saying why, if loading from the hub fails: the hub could not
be reached, or a package the hub path needs is missing (``datasets`` itself, or Pillow, which
``datasets`` needs to decode the hub's images; the note names it); every other profile uses the
local dataset, so no test and no CI run touches the network. Each bundle says which source it
came from in :attr:`DataBundle.note`, which the loaders print.

A bundle keeps its tensors in memory (on the training device after :meth:`DataBundle.to`) and
serves random batches from a caller-supplied ``torch.Generator``, so a training run is reproducible
from its seed alone.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from . import sizes

Source = Literal["auto", "hub", "local"]
SOURCES: tuple[str, ...] = ("auto", "hub", "local")

#: Image datasets: name -> (hub repository, image column, label column). ``digits`` is local only.
IMAGE_DATASETS: dict[str, tuple[str, str, str] | None] = {
    "digits": None,
    "mnist": ("ylecun/mnist", "image", "label"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "image", "label"),
    "cifar10": ("uoft-cs/cifar10", "img", "label"),
}

#: Text datasets: name -> (hub repository, configuration, text column). ``pydoc`` is local only.
TEXT_DATASETS: dict[str, tuple[str, str, str] | None] = {
    "pydoc": None,
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "text"),
}


@dataclass(frozen=True, kw_only=True)
class DataBundle:
    """A dataset ready for :func:`mpcourse.train.train`: tensors, task, and where it came from.

    Subclasses decide what a sample is (an image and its label, or a window of characters and the
    next character at each position); the training engine only calls :meth:`sample`,
    :meth:`eval_batches`, :meth:`loss` and :meth:`correct`, so it works for both.
    """

    name: str
    source: str
    note: str
    num_classes: int

    @property
    def items_per_sample(self) -> int:
        """Predictions per sample: 1 for classification, the context length for a language model."""
        return 1

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device: str | torch.device) -> DataBundle:
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random training batch ``(inputs, targets)``, drawn with ``generator`` (a CPU generator)."""
        raise NotImplementedError

    def eval_batches(
        self, batch_size: int, max_items: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out set, in order, in batches (at most ``max_items`` samples)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy, always computed in fp32 (as autocast does for this op).

        Upcasting the logits explicitly makes pure low-precision recipes compute their loss the
        same way mixed-precision ones do, so curves compare the recipes, not the loss arithmetic.
        """
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct predictions, predictions) for a batch: argmax of the logits against the targets."""
        hits = logits.detach().argmax(dim=-1).reshape(-1) == targets.reshape(-1)
        return int(hits.sum().item()), hits.numel()


@dataclass(frozen=True, kw_only=True)
class ImageData(DataBundle):
    """Images ``(N, C, H, W)`` in fp32, standardised with the training set's statistics, and labels."""

    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_eval: torch.Tensor = field(repr=False)
    y_eval: torch.Tensor = field(repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: str | torch.device) -> ImageData:
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_eval=self.x_eval.to(device),
            y_eval=self.y_eval.to(device),
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x_train), (batch_size,), generator=generator).to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def eval_batches(
        self, batch_size: int, max_items: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x_eval) if max_items is None else min(max_items, len(self.x_eval))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self.x_eval[start:stop], self.y_eval[start:stop]

    def __len__(self) -> int:
        return len(self.x_train)


@dataclass(frozen=True, kw_only=True)
class TextData(DataBundle):
    """A character-level corpus: integer token streams and the vocabulary (``num_classes`` symbols).

    A sample is a window of ``block_size`` characters; its target is the same window shifted by
    one, so every position predicts the next character.
    """

    block_size: int = 64
    vocab: str = ""
    train_tokens: torch.Tensor = field(repr=False)
    eval_tokens: torch.Tensor = field(repr=False)

    @property
    def items_per_sample(self) -> int:
        return self.block_size

    @property
    def device(self) -> torch.device:
        return self.train_tokens.device

    def to(self, device: str | torch.device) -> TextData:
        return replace(
            self, train_tokens=self.train_tokens.to(device), eval_tokens=self.eval_tokens.to(device)
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(
            len(self.train_tokens) - self.block_size - 1, (batch_size,), generator=generator
        )
        offsets = starts[:, None] + torch.arange(self.block_size + 1)
        window = self.train_tokens[offsets.to(self.device)]
        return window[:, :-1], window[:, 1:]

    def eval_batches(
        self, batch_size: int, max_items: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_windows = (len(self.eval_tokens) - 1) // self.block_size
        if max_items is not None:
            n_windows = min(n_windows, max_items)
        usable = self.eval_tokens[: n_windows * self.block_size + 1]
        inputs = usable[:-1].reshape(n_windows, self.block_size)
        targets = usable[1:].reshape(n_windows, self.block_size)
        for start in range(0, n_windows, batch_size):
            yield inputs[start : start + batch_size], targets[start : start + batch_size]

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (characters outside the vocabulary raise ``KeyError``)."""
        index = {ch: i for i, ch in enumerate(self.vocab)}
        return torch.tensor([index[ch] for ch in text], dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; accepted: {', '.join(SOURCES)}")
    if source == "auto":
        return "hub" if sizes.current() == "full" else "local"
    return source


def _check_name(name: str, table: dict) -> None:
    if name not in table:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(table)}")


def _hub(repo: str, config: str | None, split: str):  # pragma: no cover - needs the network
    """Load a split from the hub, failing fast when offline (instead of waiting on retries)."""
    import os
    import socket

    import datasets

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ConnectionError("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    socket.create_connection(("huggingface.co", 443), timeout=3).close()

    return (
        datasets.load_dataset(repo, config, split=split)
        if config
        else datasets.load_dataset(repo, split=split)
    )


#: Import names whose pip package is called something else.
_PIP_NAMES = {"PIL": "Pillow"}


def _missing_package(exc: ImportError) -> str:
    """The pip name of the package an ImportError says is missing.

    ``datasets`` says it in words ("To support decoding images, please install 'Pillow'."); a
    plain failed import names the module (``exc.name``), whose pip name may differ (PIL: Pillow).
    """
    said = re.search(r"install '([^']+)'", str(exc))
    if said:
        return said.group(1)
    module = (getattr(exc, "name", None) or "").split(".")[0]
    return _PIP_NAMES.get(module, module) or "the package named in the error"


def _hub_failure(exc: Exception, repo: str) -> str:
    """Why loading ``repo`` from the hub failed, as the start of a data note.

    Only network errors (``OSError``: refused or timed-out connections, HTTP errors, offline mode)
    mean the hub could not be reached. A missing package is named, with the command that installs
    it, since waiting for the network would not help; anything else is reported as it is.
    """
    detail = f"{type(exc).__name__}: {str(exc)[:120]}"
    if isinstance(exc, ImportError):
        package = _missing_package(exc)
        return f"loading '{repo}' from the hub needs the package '{package}', which is not installed (pip install {package}; {detail}); "
    if isinstance(exc, OSError):
        return f"the hub could not be reached ({detail}); "
    return f"loading '{repo}' from the hub failed ({detail}); "


def _split(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_eval = max(1, round(n * eval_fraction))
    return order[n_eval:], order[:n_eval]


def load_images(
    name: str = "digits",
    *,
    source: Source = "auto",
    n_train: int | None = None,
    n_eval: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> ImageData:
    """An image-classification dataset as an :class:`ImageData` bundle.

    Args:
        name: ``"digits"`` (local only), or ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` from
            the hub; with ``source="local"`` (or when the hub fails) any name gives the digits.
        source: ``"auto"``, ``"hub"`` or ``"local"`` (see the module docstring).
        n_train, n_eval: how many training / held-out images to keep (default: all of the local
            dataset; a profile-sized subset of a hub dataset).
        seed: fixes the train/eval split of the local dataset and the subsets.
        verbose: print the note saying which data this is.

    Raises:
        ValueError: for an unknown name or source, listing the accepted ones.
    """
    _check_name(name, IMAGE_DATASETS)
    chosen = _check_source(source)
    bundle = None
    fallback_reason = ""
    if chosen == "hub" and IMAGE_DATASETS[name] is not None:
        try:
            bundle = _hub_images(name, n_train, n_eval, seed)
        except Exception as exc:  # noqa: BLE001 - any failure to load from the hub means: fall back, saying why
            fallback_reason = _hub_failure(exc, IMAGE_DATASETS[name][0])
    elif chosen == "hub":
        fallback_reason = f"'{name}' has no hub version; "
    if bundle is None:
        bundle = _local_digits(n_train, n_eval, seed, fallback_reason, requested=name)
    if verbose:
        print(bundle.note)
    return bundle


def _to_image_bundle(
    images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray, **meta: str | int
) -> ImageData:
    """Scale to [0, 1], add a channel axis if needed, standardise with training statistics."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    x = x / x.max()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x_train, x_eval = x[torch.as_tensor(train_idx)], x[torch.as_tensor(eval_idx)]
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ImageData(
        x_train=((x_train - mean) / std).contiguous(),
        y_train=y[torch.as_tensor(train_idx)],
        x_eval=((x_eval - mean) / std).contiguous(),
        y_eval=y[torch.as_tensor(eval_idx)],
        num_classes=int(y.max()) + 1,
        **meta,  # type: ignore[arg-type]
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The UCI digits as (images (1797, 8, 8) float64, labels (1797,) int64), read once per process.

    They ship with this package (``mpcourse/datasets/digits.npz``, stored as uint8) and are returned
    in the dtypes scikit-learn's ``load_digits()`` gives, with the same values in the same order.
    """
    from .datasets import DIGITS

    with np.load(DIGITS) as stored:
        return stored["images"].astype(np.float64), stored["labels"].astype(np.int64)


def _local_digits(
    n_train: int | None, n_eval: int | None, seed: int, fallback_reason: str, requested: str
) -> ImageData:
    images, labels = _digits_arrays()
    train_idx, eval_idx = _split(len(labels), 0.2, seed)
    train_idx = train_idx[:n_train] if n_train else train_idx
    eval_idx = eval_idx[:n_eval] if n_eval else eval_idx
    what = (
        "the UCI handwritten digits (1,797 8x8 images, 10 classes; Alpaydin and Kaynak 1998, CC BY 4.0), "
        "shipped with mpcourse"
    )
    if requested != "digits" or fallback_reason:
        note = f"Data: {fallback_reason}using the local dataset instead of '{requested}': {what}."
    else:
        note = f"Data: {what}; no network needed."
    note += f" {len(train_idx)} training and {len(eval_idx)} held-out images."
    return _to_image_bundle(images, labels, train_idx, eval_idx, name="digits", source="local", note=note)


def _hub_images(name: str, n_train: int | None, n_eval: int | None, seed: int) -> ImageData:
    """A hub image dataset's train and test splits, shuffled with ``seed`` and cut to size.

    Reading the image column decodes every image with Pillow (``datasets`` stores them as PNG
    bytes); without Pillow that read raises ImportError, which :func:`load_images` reports as a
    missing package.
    """
    repo, image_col, label_col = IMAGE_DATASETS[name]  # type: ignore[misc]
    n_train = n_train or sizes.pick(ci=2_000, small=10_000, full=50_000)
    n_eval = n_eval or sizes.pick(ci=500, small=2_000, full=10_000)
    parts = []
    for split, n in (("train", n_train), ("test", n_eval)):
        ds = _hub(repo, None, split).shuffle(seed=seed)
        ds = ds.select(range(min(n, len(ds))))
        columns = ds[:]
        images = np.stack([np.asarray(img) for img in columns[image_col]])
        parts.append((images, np.asarray(columns[label_col])))
    images = np.concatenate([parts[0][0], parts[1][0]])
    labels = np.concatenate([parts[0][1], parts[1][1]])
    n_tr = len(parts[0][0])
    note = f"Data: '{repo}' from the Hugging Face hub, {n_tr} training and {len(parts[1][0])} test images."
    return _to_image_bundle(
        images, labels, np.arange(n_tr), np.arange(n_tr, len(images)), name=name, source="hub", note=note
    )


def load_text(
    name: str = "pydoc",
    *,
    source: Source = "auto",
    block_size: int | None = None,
    max_chars: int | None = None,
    eval_fraction: float = 0.1,
    verbose: bool = True,
) -> TextData:
    """A character-level language-modelling corpus as a :class:`TextData` bundle.

    Args:
        name: ``"pydoc"`` (local only: Python's documentation topics, from the standard library)
            or ``"wikitext2"`` from the hub; with ``source="local"`` (or when the hub fails) any
            name gives the pydoc text.
        source: ``"auto"``, ``"hub"`` or ``"local"`` (see the module docstring).
        block_size: context length in characters (default: profile-sized).
        max_chars: keep at most this many characters of the corpus (default: all).
        eval_fraction: the last fraction of the text is held out for evaluation.
        verbose: print the note saying which data this is.

    Raises:
        ValueError: for an unknown name or source, or a corpus too short for ``block_size``.
    """
    _check_name(name, TEXT_DATASETS)
    chosen = _check_source(source)
    block_size = block_size or sizes.pick(ci=32, small=64, full=128)
    text = None
    fallback_reason = ""
    if chosen == "hub" and TEXT_DATASETS[name] is not None:
        repo, config, column = TEXT_DATASETS[name]  # type: ignore[misc]
        try:
            text = "".join(_hub(repo, config, "train")[:][column])
            origin = f"'{repo}' ({config}) from the Hugging Face hub"
            src = "hub"
        except Exception as exc:  # noqa: BLE001 - any failure to load from the hub means: fall back, saying why
            fallback_reason = _hub_failure(exc, repo)
    elif chosen == "hub":
        fallback_reason = f"'{name}' has no hub version; "
    if text is None:
        text = _pydoc_text()
        what = "the English text of Python's documentation topics (pydoc_data, in the standard library)"
        if name != "pydoc" or fallback_reason:
            origin = f"{fallback_reason}using the local corpus instead of '{name}': {what}"
        else:
            origin = f"{what}; no network needed"
        src = "local"
        name = "pydoc"
    if max_chars is not None:
        text = text[:max_chars]
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character
    symbols = np.unique(codes)  # sorted: the vocabulary, as code points
    vocab = "".join(map(chr, symbols))
    tokens = torch.from_numpy(np.searchsorted(symbols, codes).astype(np.int64))
    n_eval = math.ceil(len(tokens) * eval_fraction)
    if len(tokens) - n_eval <= block_size + 1 or n_eval <= block_size + 1:
        raise ValueError(
            f"a corpus of {len(tokens)} characters is too short for block_size={block_size} "
            f"with eval_fraction={eval_fraction}; use more characters or a shorter block"
        )
    note = (
        f"Data: {origin}. {len(tokens) - n_eval:,} training and {n_eval:,} held-out characters, "
        f"{len(vocab)} distinct symbols, windows of {block_size}."
    )
    bundle = TextData(
        name=name,
        source=src,
        note=note,
        num_classes=len(vocab),
        block_size=block_size,
        vocab=vocab,
        train_tokens=tokens[:-n_eval],
        eval_tokens=tokens[-n_eval:],
    )
    if verbose:
        print(bundle.note)
    return bundle


def _pydoc_text() -> str:
    """Python's documentation topics (the text of ``help(topic)``), in a fixed order, as one string."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))
