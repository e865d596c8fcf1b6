"""An x-ray of autocast: which dtype every op of a model really ran in, and why.

``torch.autocast`` decides per op: matmuls and convolutions run in the low-precision dtype, ops
that need range or precision run in fp32, a few take the widest of their inputs, and every other op
runs in whatever dtype its inputs arrive in. The rules are lists in PyTorch's documentation, and
they differ between CUDA and CPU. This module *measures* instead of trusting the lists:

- :func:`xray` runs a model (and optionally its loss) under autocast inside a
  ``TorchFunctionMode``, which sees every torch function and tensor method *as called*, with the
  dtypes of its inputs before autocast and of its output after. Each op gets an *effect*: cast
  down to the low-precision dtype, cast up to fp32, or left in its inputs' type.
- :func:`kernels` goes one level lower with a ``TorchDispatchMode``: the ATen kernels that ran,
  forward and backward, including the casts (``_to_copy``) that autocast inserted.
- :data:`DOCUMENTED` holds PyTorch's op lists (``docs/source/amp.md``) and
  :func:`check_against_docs` compares an x-ray with them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .formats import dtype_name

#: PyTorch's autocast op lists, from docs/source/amp.md ("Autocast Op Reference"), as of PyTorch
#: 2.9-2.14. ``lower``: ops that autocast to the low-precision dtype; ``fp32``: ops that autocast
#: to float32; ``widest``: ops that promote to the widest input type; ``banned``: ops that raise in
#: an autocast region. CPU fp16 uses the bf16 lists.
DOCUMENTED: dict[str, dict[str, frozenset[str]]] = {
    "cuda": {
        "lower": frozenset(
            "__matmul__ addbmm addmm addmv addr baddbmm bmm multi_dot conv1d conv2d conv3d conv_transpose1d "
            "conv_transpose2d conv_transpose3d GRUCell linear LSTMCell matmul mm mv prelu RNNCell".split()
        ),
        "fp32": frozenset(
            "__pow__ __rdiv__ __rpow__ __rtruediv__ acos asin binary_cross_entropy_with_logits cosh "
            "cosine_embedding_loss cdist cosine_similarity cross_entropy cumprod cumsum dist erfinv exp expm1 "
            "group_norm hinge_embedding_loss kl_div l1_loss layer_norm log log_softmax log10 log1p log2 "
            "margin_ranking_loss mse_loss multilabel_margin_loss multi_margin_loss nll_loss norm normalize pdist "
            "poisson_nll_loss pow prod reciprocal rsqrt sinh smooth_l1_loss soft_margin_loss softmax softmin "
            "softplus sum renorm tan triplet_margin_loss".split()
        ),
        "widest": frozenset(
            "addcdiv addcmul atan2 bilinear cross dot grid_sample index_put scatter_add tensordot".split()
        ),
        # "binary_cross_entropy and BCELoss raise an error in autocast-enabled regions" (CUDA section)
        "banned": frozenset({"binary_cross_entropy"}),
    },
    "cpu": {
        "lower": frozenset(
            "conv1d conv2d conv3d bmm mm linalg_vecdot baddbmm addmm addbmm linear matmul _convolution conv_tbc "
            "mkldnn_rnn_layer conv_transpose1d conv_transpose2d conv_transpose3d prelu scaled_dot_product_attention "
            "_native_multi_head_attention".split()
        ),
        "fp32": frozenset(
            "avg_pool3d binary_cross_entropy grid_sampler grid_sampler_2d _grid_sampler_2d_cpu_fallback "
            "grid_sampler_3d polar prod quantile nanquantile stft cdist trace view_as_complex cholesky_inverse "
            "cholesky_solve inverse lu_solve orgqr ormqr pinverse max_pool3d max_unpool2d max_unpool3d "
            "adaptive_avg_pool3d reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d "
            "replication_pad3d mse_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss "
            "poisson_nll_loss cross_entropy_loss l1_loss huber_loss margin_ranking_loss soft_margin_loss "
            "triplet_margin_loss multi_margin_loss ctc_loss kl_div multilabel_margin_loss "
            "binary_cross_entropy_with_logits fft_fft fft_ifft fft_fft2 fft_ifft2 fft_fftn fft_ifftn fft_rfft "
            "fft_irfft fft_rfft2 fft_irfft2 fft_rfftn fft_irfftn fft_hfft fft_ihfft linalg_cond linalg_matrix_rank "
            "linalg_solve linalg_cholesky linalg_svdvals linalg_eigvals linalg_eigvalsh linalg_inv "
            "linalg_householder_product linalg_tensorinv linalg_tensorsolve fake_quantize_per_tensor_affine geqrf "
            "_lu_with_info qr svd triangular_solve fractional_max_pool2d fractional_max_pool3d adaptive_max_pool3d "
            "multilabel_margin_loss_forward linalg_qr linalg_cholesky_ex linalg_svd linalg_eig linalg_eigh "
            "linalg_lstsq linalg_inv_ex".split()
        ),
        "widest": frozenset("cat stack index_copy".split()),
    },
}

#: Python-level names whose documented (ATen) name differs, per device type.
ALIASES: dict[str, dict[str, str]] = {
    "cpu": {"cross_entropy": "cross_entropy_loss", "__matmul__": "matmul", "__rmatmul__": "matmul"},
    "cuda": {},
}

#: Shape-only ops (views and copies that never change a dtype); hidden unless asked for.
SHAPE_OPS: frozenset[str] = frozenset(
    "view reshape transpose permute contiguous split chunk unsqueeze squeeze flatten expand t __getitem__ "
    "select narrow unbind view_as expand_as unflatten".split()
)

EFFECTS: tuple[str, ...] = (
    "to low precision (autocast)",
    "to fp32 (autocast)",
    "widest input type",
    "inputs' type",
    "explicit dtype",
)

#: Conversions: ops whose output dtype the caller chose (``x.float()``, ``x.to(torch.bfloat16)``).
#: Like any call with an explicit ``dtype=``, autocast leaves them alone.
CONVERSION_OPS: frozenset[str] = frozenset("to float half bfloat16 double type type_as".split())


def documented_category(op: str, device_type: str) -> str:
    """``lower``, ``fp32``, ``widest``, ``banned`` or ``unlisted``: where PyTorch's docs put ``op``."""
    if device_type not in DOCUMENTED:
        raise ValueError(
            f"no documented autocast lists for {device_type!r}; accepted: {', '.join(DOCUMENTED)}"
        )
    name = ALIASES[device_type].get(op, op)
    for category, ops in DOCUMENTED[device_type].items():
        if name in ops:
            return category
    return "unlisted"


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _float_dtypes(obj: Any) -> list[torch.dtype]:
    return [t.dtype for t in _tensors(obj) if t.is_floating_point()]


def effect_of(inputs: list[torch.dtype], output: torch.dtype, without_autocast: torch.dtype | None) -> str:
    """What autocast did to an op: one of :data:`EFFECTS`.

    ``inputs`` are the floating dtypes the op was called with, ``output`` the dtype it returned
    under autocast, ``without_autocast`` the dtype the same call returns with autocast disabled
    (None if it cannot run without autocast, e.g. a matmul of a bf16 input with an fp32 weight).
    Autocast acted when the two differ; otherwise the op ran in its inputs' type, or in the widest
    of them when they were mixed.
    """
    if without_autocast == output:
        if len(set(inputs)) > 1 and output == functools.reduce(torch.promote_types, inputs):
            return "widest input type"
        return "inputs' type"
    if output == torch.float32:
        return "to fp32 (autocast)"
    return "to low precision (autocast)"


def _dtype_without_autocast(
    func: Callable[..., Any], args: tuple, kwargs: dict, device_type: str
) -> torch.dtype | None:
    """Run ``func`` again with autocast off (no grad, random state preserved); its output dtype or None."""
    devices = [] if device_type == "cpu" or not torch.cuda.is_available() else [torch.cuda.current_device()]
    try:
        with (
            torch.random.fork_rng(devices=devices),
            torch.no_grad(),
            torch.autocast(device_type, enabled=False),
        ):
            outputs = _float_dtypes(func(*args, **kwargs))
    except (RuntimeError, TypeError, ValueError):
        return None
    return outputs[0] if outputs else None


class _ModuleStack:
    """Tracks which submodule is running, with forward hooks, so each op knows its module."""

    def __init__(self, model: nn.Module | None) -> None:
        self.stack: list[str] = []
        self.handles: list[Any] = []
        if model is not None:
            for name, module in model.named_modules():
                label = name or type(module).__name__
                self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, label)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, label: str, module: nn.Module, args: Any) -> None:
        self.stack.append(label)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.stack.pop()  # a forward hook's return value would replace the output: return None

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else "(outside the model)"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self, modules: _ModuleStack, device_type: str, include_shape_ops: bool) -> None:
        super().__init__()
        self.modules, self.device_type, self.include_shape_ops = modules, device_type, include_shape_ops
        self.rows: list[dict[str, Any]] = []

    def frame(self) -> pd.DataFrame:
        """The ops recorded so far, one row each (``_inputs``/``_output`` hold the raw dtypes)."""
        return pd.DataFrame(
            self.rows, columns=["module", "op", "inputs", "output", "effect", "_inputs", "_output"]
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name == "__get__" or (name in SHAPE_OPS and not self.include_shape_ops):
            return out
        outputs = _float_dtypes(out)
        if not outputs:
            return out
        inputs = _float_dtypes((args, kwargs))
        explicit = (
            name in CONVERSION_OPS
            or kwargs.get("dtype") is not None
            or any(isinstance(a, torch.dtype) for a in args)
        )
        in_place = name.endswith("_") and not name.endswith("__")  # never autocast; do not run twice
        plain = (
            outputs[0]
            if explicit or in_place or not torch.is_autocast_enabled(self.device_type)
            else (_dtype_without_autocast(func, args, kwargs, self.device_type))
        )
        self.rows.append(
            {
                "module": self.modules.current,
                "op": name,
                "inputs": ", ".join(dtype_name(d) for d in inputs) or "(none)",
                "output": dtype_name(outputs[0]),
                "effect": "explicit dtype" if explicit else effect_of(inputs, outputs[0], plain),
                "_inputs": inputs,
                "_output": outputs[0],
            }
        )
        return out


@dataclass
class XRay:
    """The result of :func:`xray`: one row per op, in the order they ran."""

    table: pd.DataFrame
    device_type: str
    dtype: torch.dtype
    parameter_dtypes: dict[str, str]
    gradient_dtypes: dict[str, str]

    def __post_init__(self) -> None:
        self.table["documented"] = [documented_category(op, self.device_type) for op in self.table["op"]]

    @property
    def ops(self) -> pd.DataFrame:
        """The readable table (without the raw dtype columns)."""
        return self.table[["module", "op", "inputs", "output", "effect", "documented"]]

    def summary(self) -> pd.DataFrame:
        """Each distinct op once, with the output dtypes it produced and how often it ran."""
        grouped = self.table.groupby(["op", "documented"], sort=False)
        return grouped.agg(
            runs=("op", "size"),
            outputs=("output", lambda s: ", ".join(sorted(set(s)))),
            effects=("effect", lambda s: "; ".join(sorted(set(s)))),
        ).reset_index()

    def figure(self, title: str | None = None) -> go.Figure:
        """Every op as a marker: time runs left to right, one row per module, colour = output dtype."""
        colors = {"float32": "#1f77b4", "bfloat16": "#ff7f0e", "float16": "#2ca02c", "float64": "#7f7f7f"}
        symbols = dict(zip(EFFECTS, ("triangle-down", "triangle-up", "diamond", "circle", "square")))
        fig = go.Figure()
        t = self.table.reset_index(drop=True)
        for output, part in t.groupby("output", sort=False):
            fig.add_scatter(
                x=part.index,
                y=part["module"],
                mode="markers+text",
                text=part["op"],
                textposition="top center",
                textfont_size=9,
                marker=dict(
                    size=12,
                    color=colors.get(output, "#8c564b"),
                    symbol=[symbols.get(e, "circle") for e in part["effect"]],
                    line=dict(width=1, color="black"),
                ),
                name=f"output {output}",
                customdata=part[["inputs", "effect", "documented"]].to_numpy(),
                hovertemplate="%{text}<br>in: %{customdata[0]}<br>out: "
                + output
                + "<br>%{customdata[1]}<br>docs: %{customdata[2]}<extra></extra>",
            )
        fig.update_yaxes(categoryorder="array", categoryarray=list(dict.fromkeys(t["module"]))[::-1])
        fig.update_layout(
            title=title
            or f"Autocast x-ray ({self.device_type}, {dtype_name(self.dtype)}): ▼ cast down, ▲ cast up to fp32, ● left alone",
            xaxis_title="op, in the order it ran",
            height=max(300, 28 * t["module"].nunique() + 150),
            legend_title_text="dtype",
        )
        return fig


@contextlib.contextmanager
def recording(
    model: nn.Module | None = None, *, device_type: str = "cpu", include_shape_ops: bool = False
) -> Iterator[_FunctionRecorder]:
    """Record every op run inside the block (any code: a training loop too); ``.frame()`` gives the table.

    Ops are attributed to ``model``'s submodules when a model is given. Autocast is whatever the
    code inside sets up; each op's effect is measured against the same call without autocast.
    """
    modules = _ModuleStack(model)
    recorder = _FunctionRecorder(modules, device_type, include_shape_ops)
    try:
        with recorder:
            yield recorder
    finally:
        modules.remove()


def xray(
    model: nn.Module | Callable[..., Any],
    *inputs: Any,
    dtype: torch.dtype = torch.bfloat16,
    device_type: str | None = None,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    include_shape_ops: bool = False,
    enabled: bool = True,
) -> XRay:
    """Run ``model(*inputs)`` under ``torch.autocast(device_type, dtype)`` and record every op.

    Args:
        model: a module (ops are attributed to its submodules) or any function of ``inputs``.
        inputs: what to call it with.
        dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``).
        device_type: ``"cpu"`` or ``"cuda"`` (default: where the inputs live).
        loss_fn: if given, ``loss_fn(output)`` runs inside autocast too (and is recorded), then
            backward runs outside it, so the x-ray also reports the parameters' gradient dtypes.
        include_shape_ops: also list views and reshapes (which never change a dtype).
        enabled: ``False`` records the same model without autocast, for comparison.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    tensors = list(_tensors(inputs))
    device_type = device_type or (tensors[0].device.type if tensors else "cpu")
    module = model if isinstance(model, nn.Module) else None
    autocast = torch.autocast(device_type, dtype=dtype, enabled=enabled)
    with (
        recording(module, device_type=device_type, include_shape_ops=include_shape_ops) as recorder,
        autocast,
    ):
        out = model(*inputs)
        loss = loss_fn(out) if loss_fn is not None else None
    params = dict(module.named_parameters()) if module is not None else {}
    grads: dict[str, str] = {}
    if loss is not None and params:
        for p in params.values():
            p.grad = None
        loss.backward()  # outside autocast, as the recipe says
        grads = {n: dtype_name(p.grad.dtype) for n, p in params.items() if p.grad is not None}
    return XRay(
        recorder.frame(), device_type, dtype, {n: dtype_name(p.dtype) for n, p in params.items()}, grads
    )


def expected_output(
    op: str, inputs: list[torch.dtype], device_type: str, dtype: torch.dtype
) -> torch.dtype | None:
    """The output dtype PyTorch's documented lists predict for ``op`` (None: any of the inputs' dtypes)."""
    category = documented_category(op, device_type)
    if not inputs or torch.float64 in inputs:
        return None  # ops on float64 or on no floating input are not eligible for autocast
    if category == "lower":
        return dtype
    if category == "fp32":
        return torch.float32
    if category == "widest":
        return functools.reduce(torch.promote_types, inputs)
    return None


def check_against_docs(result: XRay) -> pd.DataFrame:
    """Rows of an x-ray that contradict PyTorch's documented lists (empty when all agree).

    Listed ops must produce the dtype their list says; unlisted ops must not be cast by autocast,
    so their output must be in one of their inputs' dtypes. Calls with an explicit dtype (``.float()``,
    ``dtype=``) are not eligible for autocast and are skipped.
    """
    bad = []
    for _, row in result.table.iterrows():
        if row["effect"] == "explicit dtype":
            continue  # not eligible for autocast: the caller chose the dtype
        want = expected_output(row["op"], row["_inputs"], result.device_type, result.dtype)
        got = row["_output"]
        if (want is not None and got != want) or (
            want is None and row["_inputs"] and got not in row["_inputs"]
        ):
            bad.append(
                {
                    **row[["module", "op", "inputs", "output", "documented"]],
                    "expected": dtype_name(want) if want else "an input's type",
                }
            )
    return pd.DataFrame(bad, columns=["module", "op", "inputs", "output", "documented", "expected"])


class _KernelRecorder(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch otherwise wraps __torch_dispatch__ in torch._dynamo.disable, whose first use imports
        # torch._dynamo (seconds). This mode never runs under torch.compile, so it needs no such guard.
        return False

    def __init__(self, modules: _ModuleStack) -> None:
        super().__init__()
        self.modules = modules
        self.phase = "forward"
        self.rows: list[dict[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = _float_dtypes(out)
        if outputs:
            self.rows.append(
                {
                    "phase": self.phase,
                    "module": self.modules.current if self.phase == "forward" else "",
                    "kernel": func.overloadpacket.__name__,
                    "inputs": ", ".join(dtype_name(d) for d in _float_dtypes((args, kwargs))) or "(none)",
                    "output": dtype_name(outputs[0]),
                }
            )
        return out


def kernels(
    model: nn.Module,
    *inputs: Any,
    loss_fn: Callable[[Any], torch.Tensor],
    dtype: torch.dtype = torch.bfloat16,
    device_type: str | None = None,
) -> pd.DataFrame:
    """The ATen kernels a training step runs, forward (under autocast) and backward (outside it).

    One row per kernel: ``phase``, ``module`` (forward only), ``kernel`` (e.g. ``addmm``,
    ``_to_copy`` for a cast), input and output dtypes. Gradients are left in the parameters.
    """
    tensors = list(_tensors(inputs))
    device_type = device_type or (tensors[0].device.type if tensors else "cpu")
    modules = _ModuleStack(model)
    recorder = _KernelRecorder(modules)
    try:
        with recorder:
            with torch.autocast(device_type, dtype=dtype):
                loss = loss_fn(model(*inputs))
            recorder.phase = "backward"
            loss.backward()
    finally:
        modules.remove()
    return pd.DataFrame(recorder.rows, columns=["phase", "module", "kernel", "inputs", "output"])


@contextlib.contextmanager
def kernel_recording(model: nn.Module | None = None) -> Iterator[list[dict[str, str]]]:
    """Record every ATen kernel that runs inside the ``with`` block, forward or backward.

    Yields a list that fills as kernels run: one dict per kernel with ``module`` (the submodule of
    ``model`` running it, or ``"(outside the model)"``), ``kernel`` (e.g. ``addmm``, or ``_to_copy``
    for a cast), and the ``inputs`` and ``output`` dtypes. Unlike :func:`kernels` it runs nothing
    itself, so it can watch any code: several calls in one autocast region, a checkpointed block
    and its recomputation in backward. ``pd.DataFrame(rows)`` turns it into a table.
    """
    modules = _ModuleStack(model)
    recorder = _KernelRecorder(modules)
    try:
        with recorder:
            yield recorder.rows
    finally:
        modules.remove()
        for row in recorder.rows:  # no forward/backward phases here: the block may hold both
            row.pop("phase", None)


#: Kernels that convert a tensor's dtype. Autocast's casts reach the dispatcher as ``_to_copy``; under
#: ``torch.inference_mode()`` composite ops are not decomposed, and they arrive as ``to``.
CAST_KERNELS: frozenset[str] = frozenset(
    {"_to_copy", "to", "_autocast_to_reduced_precision", "_autocast_to_full_precision"}
)


def count_casts(rows: Iterable[dict[str, str]], to: torch.dtype | str | None = None) -> int:
    """How many of the recorded kernels (from :func:`kernel_recording`) are casts to another dtype.

    A cast is a kernel of :data:`CAST_KERNELS` whose output dtype differs from its input's. ``to``
    keeps only the casts to that dtype (``torch.bfloat16`` or ``"bfloat16"``).
    """
    if to is not None and not isinstance(to, (str, torch.dtype)):
        raise TypeError(f"to must be a torch dtype or its name (e.g. 'bfloat16'), got {to!r}")
    wanted = dtype_name(to) if isinstance(to, torch.dtype) else to
    return sum(
        r["kernel"] in CAST_KERNELS
        and r["output"] != r["inputs"]
        and (wanted is None or r["output"] == wanted)
        for r in rows
    )
