"""Training memory: a calculator (bytes per parameter, by recipe) and an exact meter to check it.

Where does memory go when you train? Per parameter, the weights, their gradients and the
optimizer's state (Adam keeps two moments); per activation, the tensors autograd saves for the
backward pass. A precision recipe changes the bytes of each, and not always the way people expect:
automatic mixed precision (fp32 master weights, autocast) does **not** shrink the per-parameter
state, which stays 16 bytes with Adam; it shrinks the saved activations, and adds a transient
low-precision copy of each weight. Only pure low-precision training halves the state.

:func:`bytes_per_parameter` and :func:`estimate` are the calculator. :func:`state_bytes` and
:class:`SavedTensorMeter` measure the same components exactly, from tensor storage sizes, on any
device (PyTorch keeps no peak statistics for CPU memory; on CUDA, compare with
``torch.cuda.max_memory_allocated``, which also counts temporaries and allocator rounding).
:func:`step_peak` turns the calculator's components into the peak a step adds on top of the
weights and optimizer state, for that comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

#: Optimizer -> number of state tensors per parameter, each of the parameter's dtype (torch.optim).
OPTIMIZER_STATES: dict[str, int] = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}

COMPONENTS: tuple[str, ...] = ("weights", "gradients", "optimizer state", "low-precision weight copies")


@dataclass(frozen=True)
class Scheme:
    """How a family of recipes stores things, in bytes per element.

    ``weight_copy_bytes`` is the transient cast of each matmul weight that the forward pass makes
    (autocast caches it for the step; an fp8 recipe quantises it); ``activation_bytes`` is the
    typical size of a saved activation element (those saved by matmuls and convolutions dominate).
    """

    name: str
    description: str
    param_bytes: int
    weight_copy_bytes: int
    activation_bytes: int


#: The memory schemes the calculator knows. Recipes map onto them with :func:`scheme_for`.
SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("fp32", "fp32 weights, gradients, optimizer state and activations", 4, 0, 4),
        Scheme(
            "amp",
            "fp32 master weights, gradients and optimizer state; autocast saves fp16/bf16 activations "
            "and caches a 16-bit copy of each matmul weight",
            4,
            2,
            2,
        ),
        Scheme(
            "pure_bf16", "bf16 weights, gradients, optimizer state and activations; no master copy", 2, 0, 2
        ),
        Scheme(
            "fp8",
            "fp32 master weights, gradients and optimizer state; matmul inputs quantised to fp8 "
            "(activation bytes assume the fp8 copies are what is saved for backward)",
            4,
            1,
            1,
        ),
    )
}


def scheme_for(recipe: object) -> Scheme:
    """The memory scheme of a :class:`mpcourse.train.Recipe` (or of a scheme or recipe name)."""
    from .train.recipes import Recipe, get_recipe

    if isinstance(recipe, str) and recipe in SCHEMES:
        return SCHEMES[recipe]
    if not isinstance(recipe, (str, Recipe)):
        raise TypeError(f"expected a recipe or scheme name or a Recipe, got {type(recipe).__name__}")
    r = get_recipe(recipe)
    if r.precision == "fp8":
        return SCHEMES["fp8"]
    if r.pure:
        return Scheme(r.name, r.description, r.param_dtype.itemsize, 0, r.param_dtype.itemsize)
    if r.autocast_dtype is not None:
        return SCHEMES["amp"]
    return SCHEMES["fp32"]


def _optimizer_states(optimizer: str) -> int:
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZER_STATES)}")
    return OPTIMIZER_STATES[optimizer]


def bytes_per_parameter(recipe: object, optimizer: str = "adamw") -> dict[str, int]:
    """Bytes per parameter, by component, for ``recipe`` (a recipe or scheme name) and ``optimizer``.

    The low-precision weight copy applies to the parameters of linear and convolution layers only
    (not to norms or embeddings) and lives only during the step; it is listed so that the total
    matches what a step really holds.
    """
    s = scheme_for(recipe)
    return {
        "weights": s.param_bytes,
        "gradients": s.param_bytes,
        "optimizer state": _optimizer_states(optimizer) * s.param_bytes,
        "low-precision weight copies": s.weight_copy_bytes,
    }


def estimate(
    recipe: object,
    n_params: int,
    *,
    n_matmul_params: int | None = None,
    activation_elements: int = 0,
    optimizer: str = "adamw",
) -> pd.Series:
    """Bytes of each component of a training step: the calculator.

    Args:
        recipe: a recipe or scheme name, or a Recipe.
        n_params: all parameters.
        n_matmul_params: parameters of the layers autocast runs in low precision (linear layers and
            convolutions, weights and biases: they get low-precision copies; see
            :func:`matmul_parameter_count`); default: all of them.
        activation_elements: elements saved for backward per step (measure them once with
            :class:`SavedTensorMeter`; they scale with batch size and depth).
        optimizer: one of :data:`OPTIMIZER_STATES`.
    """
    per = bytes_per_parameter(recipe, optimizer)
    n_matmul = n_params if n_matmul_params is None else n_matmul_params
    out = {
        "weights": per["weights"] * n_params,
        "gradients": per["gradients"] * n_params,
        "optimizer state": per["optimizer state"] * n_params,
        "low-precision weight copies": per["low-precision weight copies"] * n_matmul,
        "activations": scheme_for(recipe).activation_bytes * activation_elements,
    }
    series = pd.Series(out, name=scheme_for(recipe).name, dtype="int64")
    series["total"] = series.sum()
    return series


def table(optimizer: str = "adamw", schemes: Iterable[str] = tuple(SCHEMES)) -> pd.DataFrame:
    """Bytes per parameter for each scheme: the calculator as a static table."""
    rows = {name: bytes_per_parameter(name, optimizer) for name in schemes}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["persistent total"] = frame[["weights", "gradients", "optimizer state"]].sum(axis=1)
    frame["activation bytes/element"] = [SCHEMES[name].activation_bytes for name in frame.index]
    return frame


def matmul_parameter_count(model: nn.Module) -> int:
    """Parameters (weights and biases) of the linear and convolution layers: those autocast copies."""
    layers = (
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
    )
    return sum(
        p.numel() for m in model.modules() if isinstance(m, layers) for p in m.parameters(recurse=False)
    )


def _storages(t: torch.Tensor) -> list[tuple[tuple[str, int], int]]:
    """``((device, address), bytes)`` of each storage behind ``t``.

    A wrapper tensor subclass (torchao's fp8 training tensors, say) has no storage of its own to
    read: its memory is that of the plain tensors it wraps (``__tensor_flatten__``), which are
    counted instead.
    """
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [item for name in names for item in _storages(getattr(t, name))]
    storage = t.untyped_storage()
    return [((str(t.device), storage.data_ptr()), storage.nbytes())]


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    found = _storages(t)
    return found[0][0] if found else None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            seen.update(_storages(t))
    return sum(seen.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The per-element tensors of an optimizer's state (moments, Kahan buffers, ...).

    Per-tensor scalars (Adam's ``step`` counter: 4 bytes per parameter *tensor*, not per parameter)
    are left out, so that the result is exactly what :func:`bytes_per_parameter` predicts.
    """
    return [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    ]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Exact bytes of the weights, gradients and optimizer state of a model, from storage sizes."""
    params = list(model.parameters())
    return {
        "weights": storage_bytes(params),
        "gradients": storage_bytes(p.grad for p in params if p.grad is not None),
        "optimizer state": storage_bytes(optimizer_tensors(optimizer)) if optimizer is not None else 0,
    }


class _ParameterCasts(TorchDispatchMode):
    """Records the bytes of every copy of a parameter made in another dtype (what autocast caches)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch otherwise wraps __torch_dispatch__ in torch._dynamo.disable, whose first use imports
        # torch._dynamo (seconds). This mode never runs under torch.compile, so it needs no such guard.
        return False

    def __init__(self, param_keys: set[tuple[str, int]]) -> None:
        super().__init__()
        self.param_keys = param_keys
        self.copies: dict[tuple[str, int], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        source = args[0] if func is torch.ops.aten._to_copy.default else None
        if (
            isinstance(source, torch.Tensor)
            and _storage_key(source) in self.param_keys
            and out.dtype != source.dtype
        ):
            self.copies.update(_storages(out))
        return out


class SavedTensorMeter:
    """Measures, inside a ``with`` block, what a forward pass adds to memory, by kind.

    - ``low-precision weight copies``: every copy of a parameter in another dtype (autocast makes
      one per matmul weight and caches it for the step; recorded at the dispatcher, so copies that
      backward does not need are counted too);
    - ``activations``: every other tensor autograd saves for backward;
    - ``weights``: saved tensors that *are* parameters (no new memory; already counted as weights).

    Storages are counted once however many views of them are saved.
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self._param_keys = {_storage_key(p) for p in model.parameters()} if model is not None else set()
        self._saved: dict[tuple[str, int], int] = {}
        self._casts = _ParameterCasts(self._param_keys)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.numel():
            for key, nbytes in _storages(t):
                self._saved.setdefault(key, nbytes)
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        self._casts.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._casts.__exit__(*exc)
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> dict[str, int]:
        """Bytes by kind: ``activations``, ``low-precision weight copies``, ``weights`` (shared)."""
        copies = self._casts.copies
        out = {"activations": 0, "low-precision weight copies": sum(copies.values()), "weights": 0}
        for key, nbytes in self._saved.items():
            if key in self._param_keys:
                out["weights"] += nbytes
            elif key not in copies:
                out["activations"] += nbytes
        return out


def measure_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    *inputs: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> pd.Series:
    """Run one training step and return its exact memory components, as :func:`estimate` names them.

    ``loss_fn(model, *inputs)`` returns the loss; it runs under autocast when ``autocast_dtype`` is
    given, and backward runs outside it. Components are measured after ``optimizer.step()``, when
    gradients and optimizer state both exist; saved tensors are measured during the forward pass.
    """
    device_type = next(model.parameters()).device.type
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(
        device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    )
    with SavedTensorMeter(model) as meter, autocast:
        loss = loss_fn(model, *inputs)
    saved = meter.bytes
    loss.backward()
    optimizer.step()
    out = state_bytes(model, optimizer)
    out["low-precision weight copies"] = saved["low-precision weight copies"]
    out["activations"] = saved["activations"]
    series = pd.Series(out, dtype="int64")
    series["total"] = series.sum()
    return series


#: How far above :func:`step_peak`'s prediction a measured CUDA peak may lie: the caching allocator
#: rounds every block up to a multiple of 512 bytes (a few kB for a few dozen tensors), and
#: backward's transient tensors, which the calculator does not list (gradients of activations, a
#: 16-bit weight gradient before its cast to fp32), stay below the optimizer's buffer when
#: parameters dominate the step (a small batch). Measured on CPU through the profiler's allocation
#: events (tests/test_memory.py), the excess there is 16 bytes.
PEAK_TOLERANCE = 0.05


def step_peak(estimated: pd.Series, optimizer: str = "adamw") -> dict[str, int]:
    """The memory one training step adds above what it starts with (weights and optimizer state).

    Two moments of the step hold the most, each made of the calculator's components:

    - the optimizer step: all gradients, plus the optimizer's temporaries. With ``foreach=True``
      (the default for CUDA tensors) AdamW computes ``sqrt(v)`` for every parameter into new
      tensors before updating in place: one moment's worth, half of its state;
    - the end of the forward pass: every saved activation and low-precision weight copy.

    Returns ``{"optimizer step": ..., "end of forward": ..., "predicted": max of the two}`` in
    bytes. The prediction holds for a step whose parameters dominate (a small batch): then the
    backward pass, which frees activations and copies as it creates gradients, stays below the
    optimizer step. ``estimated`` is a :func:`estimate` result.
    """
    states = _optimizer_states(optimizer)
    temporaries = estimated["optimizer state"] // states if states and optimizer.startswith("adam") else 0
    step = int(estimated["gradients"] + temporaries)
    forward = int(estimated["activations"] + estimated["low-precision weight copies"])
    return {"optimizer step": step, "end of forward": forward, "predicted": max(step, forward)}
