"""``mpcourse record``: measure this machine once and store every result where the chapters read it.

The chapters plot stored reference results next to what the reader's machine measures: matmul
sweeps and training steps (:mod:`mpcourse.bench.results`), fp8 GEMMs (:mod:`mpcourse.bench.fp8`),
the losses of the fp8 training recipes (:mod:`mpcourse.bench.fp8_recipes`), and the outcome of every chapter (:mod:`mpcourse.course.verify`). Adding a machine to them used to take
four commands, each with a file name to invent. :func:`record` runs them in order, names every file
after the machine (:func:`machine_slug`), and goes on when one step fails, because time on a large
GPU is often short and the other steps are still worth keeping. A step that cannot run on this
machine (fp8 GEMMs without fp8 tensor cores) is skipped and says why.

Files go into the package's reference folders, so the chapters pick them up at once; with
``out`` they go into a separate folder with the same layout, to copy over after a look. A step
whose file exists is skipped, so a recording never replaces a stored result unless ``force`` is
given (``--force``); with it, the step replaces that one file.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import device as devices
from .. import sizes

#: The steps of a recording, in the order they run.
STEPS: tuple[str, ...] = ("matmul", "train", "fp8", "fp8_recipes", "verify")

#: The package folder; every stored result lives below it.
PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: Where each step's file goes, relative to the package (``{slug}`` and ``{profile}`` filled in).
DESTINATIONS: dict[str, str] = {
    "matmul": "reference/matmul/{slug}.json",
    "train": "reference/train/{slug}.json",
    "fp8": "reference/fp8/{slug}.json",
    "fp8_recipes": "reference/fp8_recipes/{slug}-{profile}.json",
    "verify": "reference/verified/{slug}-{profile}.json",
}

#: Words in device names that say nothing about the device (vendor and product-line names).
_NOISE_WORDS = {"nvidia", "tesla", "geforce", "amd", "radeon", "instinct", "intel(r)", "corporation"}


@dataclass(frozen=True)
class StepResult:
    """What one step of a recording did: ``status`` is ``written``, ``skipped`` or ``failed``."""

    step: str
    status: str
    path: Path | None
    seconds: float
    note: str = ""


def machine_slug(caps: devices.Capabilities | None = None) -> str:
    """A short file-name stem for this machine, as the stored references are named.

    GPUs are named by model without the vendor (``h200``, ``a100-sxm4-80gb``, ``t4``); CPUs by
    the best low-precision instruction set they have and their core count (``cpu-amx-2core``,
    ``cpu-avx2-8core``; ``cpu-arm64-8core`` on a CPU without x86 flags).
    """
    caps = caps or devices.capabilities()
    if caps.kind == "cpu":
        flags = caps.cpu_flags
        isa = next(
            (
                name
                for name, flag in (
                    ("amx", "amx_bf16"),
                    ("avx512bf16", "avx512_bf16"),
                    ("avx512", "avx512f"),
                    ("avx2", "avx2"),
                )
                if flag in flags
            ),
            platform.machine().lower() or "unknown",
        )
        return f"cpu-{isa}-{os.cpu_count() or 1}core"
    words = [w for w in caps.name.lower().split() if w not in _NOISE_WORDS]
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(words)).strip("-")
    return slug or caps.kind


def destination(step: str, slug: str, profile_name: str, root: Path = PACKAGE_DIR) -> Path:
    """Where ``step`` stores its result for machine ``slug`` below ``root`` (default: the package)."""
    if step not in DESTINATIONS:
        raise ValueError(f"unknown step {step!r}; accepted: {', '.join(STEPS)}")
    return root / DESTINATIONS[step].format(slug=slug, profile=profile_name)


@contextlib.contextmanager
def _profile(name: str) -> Iterator[None]:
    """Run the enclosed steps with ``MPCOURSE_PROFILE`` set to ``name`` (restored afterwards)."""
    saved = os.environ.get(sizes.ENV_VAR)
    os.environ[sizes.ENV_VAR] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(sizes.ENV_VAR, None)
        else:
            os.environ[sizes.ENV_VAR] = saved


def _bench(topic: str, quick: bool, force: bool) -> Callable[[Path], int]:
    def run(path: Path) -> int:
        from .cli import bench_function

        return bench_function(topic)(save=path, quick=quick, force=force)

    return run


def _verify(profile_name: str, notebooks: Sequence[Path], jobs: int, force: bool) -> Callable[[Path], int]:
    def run(path: Path) -> int:
        from .verify import verify

        records = verify(list(notebooks), profile_name, out=path, jobs=jobs, force=force)
        return 0 if all(r["status"] == "passed" for r in records) else 1

    return run


def _skip_reason(step: str, caps: devices.Capabilities, notebooks: Sequence[Path]) -> str | None:
    if step == "fp8" and not (caps.kind == "cuda" and caps.fp8_native):
        return f"needs fp8 tensor cores (NVIDIA sm_89 or newer); this is {caps.describe()}"
    if step == "verify" and not notebooks:
        return "no chapter notebooks found (run from the repository root, or pass notebooks)"
    return None


def record(
    steps: Sequence[str] = STEPS,
    *,
    profile_name: str | None = None,
    out: Path | None = None,
    notebooks: Sequence[Path] = (),
    quick: bool = False,
    jobs: int = 1,
    force: bool = False,
) -> list[StepResult]:
    """Run ``steps`` on this machine and store each result under the machine's name.

    Args:
        steps: any of :data:`STEPS`, run in that order.
        profile_name: problem sizes for every step (default: the active profile, ``full`` on a GPU).
        out: a folder to write into, laid out as the package (default: the package itself).
        notebooks: the chapters to verify (default: ``notebooks/*.ipynb`` of the working folder).
        quick: the benchmarks' smoke sizes (``--quick``); for trying the command, not for storing.
        jobs: chapters verified at once.
        force: replace files that exist; without it, an existing result stops its step.

    Raises, before anything runs:
        ValueError: for an unknown step or profile, or ``jobs`` < 1, or a chapter that is not a notebook.
        FileNotFoundError: a chapter in ``notebooks`` that does not exist.
        NotADirectoryError: ``out`` is a file.
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ValueError(f"unknown or no steps {unknown or list(steps)}; accepted: {', '.join(STEPS)}")
    name = profile_name or sizes.current()
    if name not in sizes.PROFILES:
        raise ValueError(f"unknown profile {name!r}; accepted: {', '.join(sizes.PROFILES)}")
    if jobs < 1:
        raise ValueError(f"jobs must be a positive number of chapters to run at once, got {jobs}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"{out} is a file; --out takes a folder, laid out as the package")
    if notebooks and "verify" in steps:
        from .verify import check_notebooks

        check_notebooks(list(notebooks))
    notebooks = list(notebooks) or sorted(Path("notebooks").glob("*.ipynb"))
    caps = devices.capabilities()
    slug = machine_slug(caps)
    root = Path(out) if out is not None else PACKAGE_DIR
    runners: dict[str, Callable[[Path], int]] = {
        "matmul": _bench("matmul", quick, force),
        "train": _bench("train", quick, force),
        "fp8": _bench("fp8", quick, force),
        "fp8_recipes": _bench("fp8_recipes", quick, force),
        "verify": _verify(name, notebooks, jobs, force),
    }
    print(
        f"recording {', '.join(s for s in STEPS if s in steps)} on {caps.describe()} as '{slug}', profile '{name}', into {root}"
    )
    done: list[StepResult] = []
    with _profile(name):
        for step in (s for s in STEPS if s in steps):
            path = destination(step, slug, name, root)
            start = time.perf_counter()
            reason = _skip_reason(step, caps, notebooks)
            if reason is None and path.exists() and not force:
                reason = f"{path} exists (force=True, or --force, replaces it)"
            if reason is not None:
                done.append(StepResult(step, "skipped", None, 0.0, reason))
                print(f"\n== {step}: skipped, {reason}")
                continue
            print(f"\n== {step} -> {path}")
            raised = False
            try:
                status = runners[step](path)
                note = "" if status == 0 else f"finished with exit status {status}"
            except Exception:  # noqa: BLE001 - one failed step must not cost the others
                status, note, raised = 1, traceback.format_exc(limit=3).strip().splitlines()[-1], True
            written = (
                path.exists() and not raised
            )  # a file there after a raise is not this step's (or not whole)
            result = StepResult(
                step,
                "written" if written and status == 0 else "failed",
                path if written else None,
                round(time.perf_counter() - start, 1),
                note,
            )
            done.append(result)
    print("\n" + summary(done))
    return done


def summary(results: Sequence[StepResult]) -> str:
    """One line per step: what it did, how long it took, and where its file is."""
    lines = []
    for r in results:
        where = f" -> {r.path}" if r.path else ""
        lines.append(
            f"{r.step:<7} {r.status:<8} {r.seconds:>7.1f} s{where}{'  (' + r.note + ')' if r.note else ''}"
        )
    return "\n".join(lines)
