"""Which library offers which fp8 (and fp4) training recipe, on which GPU: the course's table, as data.

A practitioner picks a recipe and a library together, and the GPU decides between them: torchao's
recipes call ``torch._scaled_mm`` (fp8 tensor cores from NVIDIA sm_89), Transformer Engine ships
its own kernels, one per recipe, each with its own minimum compute capability, and the course's
:class:`~mpcourse.fp8.linear.FP8Linear` emulates every recipe anywhere. :data:`LIBRARY_TABLE` holds
one row per recipe with, for each library, the API that selects it, the release it was checked
against, the lowest GPU its fast path needs and the source that says so; :func:`table` and
:func:`side_by_side` render it; :func:`te_status` says, like :func:`~mpcourse.fp8.torchao.torchao_status`,
whether Transformer Engine can run a recipe here.

The versions are those read: torchao 0.18.0 (installed and run on a CPU; source at tag v0.18.0,
commit 5f2baf9) and Transformer Engine 2.18.0 (tag v2.18, commit 27486e0; it needs CUDA to install,
so it was read, not run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import pandas as pd
import torch

from .. import __version__ as COURSE_VERSION
from .. import device as device_mod

#: The libraries of the table, in column order.
LIBRARIES: tuple[str, ...] = ("torchao", "Transformer Engine", "mpcourse")
TORCHAO_VERSION = "0.18.0"
TE_VERSION = "2.18.0"

Status = Literal["stable", "prototype", "legacy", "removed", "absent", "emulated"]
STATUSES: tuple[str, ...] = ("stable", "prototype", "legacy", "removed", "absent", "emulated")

#: How Transformer Engine is installed (its README, v2.18): it compiles against the local CUDA and torch.
TE_INSTALL = "pip install --no-build-isolation transformer_engine[pytorch]"

CC = tuple[int, int]


@dataclass(frozen=True)
class Offer:
    """How one library offers one recipe.

    ``api`` is the code that selects the recipe (None where the library does not offer it).
    ``min_cc`` is the lowest NVIDIA compute capability its fast path runs on; None for the course's
    emulation (any device) and for a recipe not offered. ``below_cc`` is the first compute
    capability it does not support (None: no upper bound). ``min_cuda`` is a CUDA version it needs,
    on every GPU or, with ``cuda_below_cc``, only on GPUs below that compute capability.
    ``defaults`` are the documented defaults of the recipe object; ``notes`` everything else a
    practitioner must know; ``sources`` are keys of book/references.bib.
    """

    api: str | None
    status: Status
    version: str
    sources: tuple[str, ...]
    min_cc: CC | None = None
    below_cc: CC | None = None
    min_cuda: CC | None = None
    cuda_below_cc: CC | None = None
    defaults: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; accepted: {', '.join(STATUSES)}")
        if (self.api is None) != (self.status in ("removed", "absent")):
            raise ValueError(
                f"an offer has an api exactly when its status is not 'removed' or 'absent'; got api={self.api!r} "
                f"with status {self.status!r}"
            )
        if not self.sources:
            raise ValueError(f"the offer {self.api!r} needs at least one source key (book/references.bib)")

    @property
    def gpu(self) -> str:
        """The GPU condition in words, e.g. ``sm_89+; CUDA 12.1+ below sm_90`` ("-": not offered)."""
        if self.api is None:
            return "-"
        if self.min_cc is None:
            return "any device"
        parts = [f"sm_{self.min_cc[0]}{self.min_cc[1]}+"]
        if self.below_cc is not None:
            parts.append(f"not sm_{self.below_cc[0]}{self.below_cc[1]}+")
        if self.min_cuda is not None:
            cuda = f"CUDA {self.min_cuda[0]}.{self.min_cuda[1]}+"
            if self.cuda_below_cc is not None:
                cuda += f" below sm_{self.cuda_below_cc[0]}{self.cuda_below_cc[1]}"
            parts.append(cuda)
        return "; ".join(parts)


@dataclass(frozen=True)
class LibraryRecipe:
    """One row of the table: a recipe, and how each of :data:`LIBRARIES` offers it."""

    key: str
    name: str
    description: str
    offers: MappingProxyType[str, Offer] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        missing = set(LIBRARIES) - set(self.offers)
        if missing:
            raise ValueError(f"recipe {self.key!r} lacks an entry for {', '.join(sorted(missing))}")


def _course(config: str, sources: tuple[str, ...], notes: str) -> Offer:
    return Offer(f'fp8.convert_to_fp8(model, "{config}")', "emulated", COURSE_VERSION, sources, notes=notes)


_SCALED_MM = "emulated exactly anywhere; on sm_89+ GPUs its GEMMs run in torch._scaled_mm"
_EMULATED = "emulated exactly anywhere (fp32 arithmetic): the numbers of the recipe, not its speed"
_AO_CPU = "on a CPU, PyTorch's emulated torch._scaled_mm runs it unchanged (checked with torch 2.14.1)"
_TE_FP8 = dict(min_cc=(8, 9), min_cuda=(12, 1), cuda_below_cc=(9, 0))


def _rows() -> tuple[LibraryRecipe, ...]:
    ao, te = TORCHAO_VERSION, TE_VERSION
    te_absent = ("nvidia-te-recipes",)
    rows = [
        LibraryRecipe(
            "tensorwise",
            "tensorwise current scaling",
            "one scale per tensor from its amax, computed as it is cast; E4M3 forward, E5M2 gradients",
            {
                "torchao": Offer(
                    'convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("tensorwise"))',
                    "stable",
                    ao,
                    ("torchao-float8",),
                    min_cc=(8, 9),
                    notes=f"or AMD MI300+ (ROCm); torchao's fastest recipe; {_AO_CPU}",
                ),
                "Transformer Engine": Offer(
                    "te.autocast(recipe=Float8CurrentScaling())",
                    "stable",
                    te,
                    ("nvidia-te-current", "nvidia-te-autocast"),
                    **_TE_FP8,
                    defaults="fp8_format=Format.HYBRID (E4M3 forward, E5M2 backward), scales not rounded to "
                    "powers of two",
                    notes="on sm_89 also cuBLASLt 12.1.3+",
                ),
                "mpcourse": _course("fp8_tensorwise", ("nvidia-te-recipes", "torchao-float8"), _SCALED_MM),
            },
        ),
        LibraryRecipe(
            "delayed",
            "tensorwise delayed scaling (legacy)",
            "one scale per tensor predicted from an amax history of earlier steps; E4M3 forward, E5M2 gradients",
            {
                "torchao": Offer(
                    None,
                    "removed",
                    ao,
                    ("torchao-delayed-removal",),
                    notes="deprecated in torchao 0.9.0, deleted in 0.10.0 for lack of real-world use; "
                    "torchao scales dynamically (current scaling)",
                ),
                "Transformer Engine": Offer(
                    "te.autocast(recipe=DelayedScaling())",
                    "legacy",
                    te,
                    ("nvidia-te-delayed", "nvidia-te-recipes", "nvidia-te-autocast"),
                    **_TE_FP8,
                    defaults="fp8_format=Format.HYBRID, margin=0, amax_history_len=1024, "
                    'amax_compute_algo="max", reduce_amax=True',
                    notes="still TE 2.18's default recipe on sm_89 and sm_90 (get_default_fp8_recipe); "
                    "refused under torch.compile",
                ),
                "mpcourse": _course("fp8_delayed", ("nvidia-te-delayed",), _SCALED_MM),
            },
        ),
        LibraryRecipe(
            "rowwise",
            "rowwise scaling",
            "one scale per row along the GEMM's inner dimension, rounded down to a power of two; E4M3 everywhere",
            {
                "torchao": Offer(
                    'convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("rowwise"))',
                    "stable",
                    ao,
                    ("torchao-float8",),
                    min_cc=(8, 9),
                    notes="PyTorch has an sm_89 rowwise kernel, but torchao's own rowwise tests skip below "
                    f"sm_90; {_AO_CPU}",
                ),
                "Transformer Engine": Offer(
                    None,
                    "absent",
                    te,
                    te_absent,
                    notes="no per-row recipe; Float8BlockScaling's 1x128 blocks are the nearest",
                ),
                "mpcourse": _course("fp8_rowwise", ("torchao-float8",), _SCALED_MM),
            },
        ),
        LibraryRecipe(
            "rowwise_gw_hp",
            "rowwise, weight gradient in high precision",
            "rowwise forward and input gradient (the weight tensorwise for it); the weight-gradient GEMM in bf16",
            {
                "torchao": Offer(
                    'convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("rowwise_with_gw_hp"))',
                    "stable",
                    ao,
                    ("torchao-float8",),
                    min_cc=(8, 9),
                    notes=f"torchao's most accurate recipe; {_AO_CPU}",
                ),
                "Transformer Engine": Offer(
                    None,
                    "absent",
                    te,
                    te_absent,
                    notes='no such recipe; a recipe\'s backward_override="high_precision" keeps the whole '
                    "backward pass in high precision instead",
                ),
                "mpcourse": _course("fp8_rowwise_gw_hp", ("torchao-float8",), _SCALED_MM),
            },
        ),
        LibraryRecipe(
            "blockwise",
            "DeepSeek-V3 blocks (1x128, 128x128)",
            "one fp32 scale per 1x128 block of activations and gradients and per 128x128 tile of weights; E4M3",
            {
                "torchao": Offer(
                    "quantize_(model, Float8BlockwiseLinearConfig())",
                    "prototype",
                    ao,
                    ("torchao-blockwise-training",),
                    min_cc=(9, 0),
                    notes="torchao.prototype.blockwise_fp8_training; asserts sm_90, bf16 layers without bias, "
                    "in/out features divisible by 128",
                ),
                "Transformer Engine": Offer(
                    "te.autocast(recipe=Float8BlockScaling())",
                    "stable",
                    te,
                    ("nvidia-te-blockwise", "nvidia-te-autocast"),
                    min_cc=(9, 0),
                    min_cuda=(12, 9),
                    defaults="fp8_format=Format.E4M3, x_block_scaling_dim=1, w_block_scaling_dim=2, "
                    "grad_block_scaling_dim=1, scales rounded to powers of two",
                    notes="software-emulated GEMMs on Hopper; on sm_100+ run through MXFP8 (powers-of-two "
                    "scales only)",
                ),
                "mpcourse": _course("fp8_blockwise", ("deepseek2024v3", "nvidia-te-blockwise"), _EMULATED),
            },
        ),
        LibraryRecipe(
            "mxfp8",
            "MXFP8",
            "one power-of-two (E8M0) scale per 32 elements; E4M3 everywhere (OCP MX)",
            {
                "torchao": Offer(
                    "quantize_(model, MXFP8TrainingOpConfig.from_recipe(MXFP8TrainingRecipe.MXFP8_RCEIL))",
                    "prototype",
                    ao,
                    ("torchao-mx-training",),
                    min_cc=(10, 0),
                    min_cuda=(12, 8),
                    notes="torchao.prototype.moe_training.config; MXFP8TrainingRecipe.MXFP8_EMULATED_RCEIL "
                    "runs anywhere, a CPU included",
                ),
                "Transformer Engine": Offer(
                    "te.autocast(recipe=MXFP8BlockScaling())",
                    "stable",
                    te,
                    ("nvidia-te-mxfp8", "nvidia-te-autocast"),
                    min_cc=(10, 0),
                    below_cc=(12, 0),
                    defaults="fp8_format=Format.E4M3, 32-element blocks, E8M0 scales",
                    notes="TE's documented devices: SM 10.0 and 10.3",
                ),
                "mpcourse": _course("mxfp8", ("ocp2023mx", "nvidia-te-recipes"), _EMULATED),
            },
        ),
        LibraryRecipe(
            "nvfp4",
            "NVFP4",
            "E2M1 elements, one E4M3 scale per 16 and an fp32 scale per tensor",
            {
                "torchao": Offer(
                    "quantize_(model, NVFP4TrainingConfig())",
                    "prototype",
                    ao,
                    ("torchao-mx-training",),
                    min_cc=(10, 0),
                    notes="torchao.prototype.moe_training.nvfp4_training (Triton kernels); torchao's status "
                    "table gives its training performance the lowest mark",
                ),
                "Transformer Engine": Offer(
                    "te.autocast(recipe=NVFP4BlockScaling())",
                    "stable",
                    te,
                    ("nvidia-te-nvfp4", "nvidia-te-autocast"),
                    min_cc=(10, 0),
                    defaults="fp4_format=Format.E2M1; random Hadamard transforms on the weight-gradient GEMM's "
                    "inputs, stochastic rounding of gradients, 16x16 blocks for weights",
                    notes="TE's documented training devices: SM 10.0 and 10.3",
                ),
                "mpcourse": _course("nvfp4", ("nvidia-te-nvfp4", "nvidia2025nvfp4"), _EMULATED),
            },
        ),
    ]
    return tuple(LibraryRecipe(r.key, r.name, r.description, MappingProxyType(dict(r.offers))) for r in rows)


#: The table: one :class:`LibraryRecipe` per recipe, by key.
LIBRARY_TABLE: MappingProxyType[str, LibraryRecipe] = MappingProxyType({r.key: r for r in _rows()})


def get_offer(recipe: str, library: str) -> Offer:
    """How ``library`` offers ``recipe`` (a key of :data:`LIBRARY_TABLE`)."""
    if recipe not in LIBRARY_TABLE:
        raise ValueError(f"unknown recipe {recipe!r}; accepted: {', '.join(LIBRARY_TABLE)}")
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; accepted: {', '.join(LIBRARIES)}")
    return LIBRARY_TABLE[recipe].offers[library]


def table() -> pd.DataFrame:
    """The whole table, one row per (recipe, library): API, status, GPU, version, defaults, notes, sources.

    A course configuration that this installed package does not define yet is marked as such, so the
    table never names an API that would fail.
    """
    from .linear import CONFIGS

    rows = []
    for recipe in LIBRARY_TABLE.values():
        for library in LIBRARIES:
            offer = recipe.offers[library]
            status = offer.status
            if library == "mpcourse" and offer.api and offer.api.split('"')[1] not in CONFIGS:
                status = "not in this version"
            rows.append(
                {
                    "recipe": recipe.name,
                    "library": library,
                    "API": offer.api or "-",
                    "status": status,
                    "GPU": offer.gpu,
                    "version": offer.version,
                    "defaults": offer.defaults,
                    "notes": offer.notes,
                    "sources": ", ".join(offer.sources),
                }
            )
    return pd.DataFrame(rows).set_index(["recipe", "library"])


def side_by_side() -> pd.DataFrame:
    """Recipes against libraries, each cell the status and the GPU it needs: the table at a glance."""
    full = table()
    cells = full["status"] + full["GPU"].map(lambda gpu: "" if gpu == "-" else f", {gpu}")
    frame = cells.unstack("library")[list(LIBRARIES)]
    versions = {"torchao": TORCHAO_VERSION, "Transformer Engine": TE_VERSION, "mpcourse": COURSE_VERSION}
    frame.columns = [f"{lib} {versions[lib]}" for lib in LIBRARIES]
    return frame.loc[[r.name for r in LIBRARY_TABLE.values()]]


def hardware_status(offer: Offer, caps: device_mod.Capabilities, what: str) -> tuple[bool, str]:
    """Whether the GPU of ``caps`` meets ``offer``'s compute-capability and CUDA conditions.

    ``what`` names the offer in the reason (``"Transformer Engine's Float8BlockScaling"``). CUDA's
    version is checked only on this machine (a preset has none); for a preset the reason names it.
    """
    if offer.api is None:
        return False, f"{what} is not offered ({offer.notes})"
    if offer.min_cc is None:
        return True, f"{what} runs on any device"
    cc = caps.compute_capability
    if caps.kind != "cuda" or caps.is_rocm or cc is None:
        return False, f"{what} needs an NVIDIA GPU, {offer.gpu}; this is {caps.describe()}"
    if cc < offer.min_cc:
        return False, f"{what} needs {offer.gpu}; this is {caps.describe()}"
    if offer.below_cc is not None and cc >= offer.below_cc:
        return (
            False,
            f"{what} does not support sm_{offer.below_cc[0]}{offer.below_cc[1]} and newer in release "
            f"{offer.version}; this is {caps.describe()}",
        )
    needs_cuda = offer.min_cuda is not None and (offer.cuda_below_cc is None or cc < offer.cuda_below_cc)
    if needs_cuda:
        wanted = f"{offer.min_cuda[0]}.{offer.min_cuda[1]}"
        if caps.preset is not None:
            return True, f"{what} runs on {caps.describe()} with CUDA {wanted}+"
        built = torch.version.cuda
        if built is None or tuple(int(p) for p in built.split(".")[:2]) < offer.min_cuda:
            return False, f"{what} needs CUDA {wanted}+ on this GPU; this torch is built for CUDA {built}"
    return True, f"{what} runs on {caps.describe()}"


#: Transformer Engine's recipe classes by table key (transformer_engine.common.recipe, v2.18).
TE_RECIPES: MappingProxyType[str, str] = MappingProxyType(
    {
        key: r.offers["Transformer Engine"].api.split("recipe=")[1].split("(")[0]
        for key, r in LIBRARY_TABLE.items()
        if r.offers["Transformer Engine"].api
    }
)


def te_status(caps: device_mod.Capabilities | None = None, recipe: str = "tensorwise") -> tuple[bool, str]:
    """Whether Transformer Engine can train with ``recipe`` here, and why not if it cannot.

    ``recipe`` is a key of :data:`LIBRARY_TABLE` or a TE class name (``"Float8BlockScaling"``). The GPU
    is checked first, against the compute capability (and CUDA version) TE 2.18's
    ``check_*_support`` functions require; then whether ``transformer_engine.pytorch`` imports. For a
    preset device (not this machine) only the hardware is judged, and the reason says so.
    """
    by_class = {cls: key for key, cls in TE_RECIPES.items()}
    key = by_class.get(recipe, recipe)
    if key not in TE_RECIPES:
        offered = ", ".join(f"{k} ({c})" for k, c in TE_RECIPES.items())
        if key in LIBRARY_TABLE:
            raise ValueError(
                f"Transformer Engine has no {key!r} recipe ({get_offer(key, 'Transformer Engine').notes}); "
                f"it offers: {offered}"
            )
        raise ValueError(f"unknown recipe {recipe!r}; Transformer Engine offers: {offered}")
    caps = caps or device_mod.capabilities()
    offer = get_offer(key, "Transformer Engine")
    what = f"Transformer Engine's {TE_RECIPES[key]}"
    ok, why = hardware_status(offer, caps, what)
    if not ok:
        return False, why
    if caps.preset is not None:
        return True, f"{why} (a preset: the hardware is judged, not an installation)"
    try:
        import transformer_engine
        import transformer_engine.pytorch  # the PyTorch extension, which needs CUDA
    except ImportError as err:
        return (
            False,
            f"this GPU can run {TE_RECIPES[key]}, but Transformer Engine is not installed ({err}): `{TE_INSTALL}`",
        )
    except Exception as err:  # noqa: BLE001 - a TE built for another torch or CUDA fails in many ways at import
        return False, (
            f"Transformer Engine is installed but does not load with torch {torch.__version__} "
            f"({type(err).__name__}: {err}); rebuild it for this torch"
        )
    return True, f"Transformer Engine {getattr(transformer_engine, '__version__', '?')}: {why}"


__all__ = [
    "LIBRARIES",
    "LIBRARY_TABLE",
    "STATUSES",
    "TE_INSTALL",
    "TE_RECIPES",
    "TE_VERSION",
    "TORCHAO_VERSION",
    "LibraryRecipe",
    "Offer",
    "get_offer",
    "hardware_status",
    "side_by_side",
    "table",
    "te_status",
]
