"""Every public module imports on its own, and the registries are complete after importing any of them.

Each module of the package (found by walking it with pkgutil) is imported first in a fresh
interpreter, which then uses the three registries: every training recipe by name
(``from mpcourse import train; train.get_recipe("fp8_rowwise")``), every exercise check the chapters
call, every benchmark topic of ``mpcourse bench``. An import cycle, or a registry that is only
complete once some other module has been imported, fails here.

One subprocess does it all, to stay fast: it imports the heavy third-party libraries once and then
forks one child per module, so each child starts with no part of mpcourse imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "mpcourse"

#: The chapters' exercise checks, read from the chapters themselves (not from the registry under test).
CHAPTER_LABELS = sorted(
    {
        label
        for md in (ROOT / "notebooks").glob("*.md")
        for label in re.findall(r'\bcheck\(\s*"([a-z0-9_]+-[a-z0-9_-]+)"', md.read_text())
    }
)

# Runs in the subprocess. argv[1]: a folder for the children's reports.
ZYGOTE = r'''
import compileall, importlib, importlib.util, json, os, pkgutil, sys, traceback

# Third-party libraries the package imports, loaded once here: each child then spends its time on mpcourse.
for dep in ("numpy", "pandas", "torch", "torch.utils.benchmark", "plotly.graph_objects", "plotly.subplots",
            "plotly.express", "tqdm.auto", "IPython", "IPython.display", "PIL", "pyarrow", "jupytext", "nbclient",
            "nbformat", "yaml", "pygments"):
    try:
        importlib.import_module(dep)
    except ImportError:
        pass


def walk(path, prefix):
    """The modules under `path`, as pkgutil.walk_packages finds them, but without importing the packages."""
    for info in pkgutil.iter_modules([path]):
        yield prefix + info.name
        if info.ispkg:
            yield from walk(os.path.join(path, info.name), prefix + info.name + ".")


root = importlib.util.find_spec("mpcourse").submodule_search_locations[0]  # finds, does not import
modules = ["mpcourse", *walk(root, "mpcourse.")]
public = [m for m in modules if not any(part.startswith("_") for part in m.split("."))]
# Compile the package once, into a cache outside the tree, instead of once per child.
sys.dont_write_bytecode, sys.pycache_prefix = False, os.path.join(sys.argv[1], "pycache")
compileall.compile_dir(root, quiet=1)
assert not [m for m in sys.modules if m.split(".")[0] == "mpcourse"], "mpcourse was imported before the children"


def use_the_registries(first):
    """Import `first` (None: every module, for the reference), then look up everything by name."""
    for name in ([first] if first else public):
        importlib.import_module(name)
    from mpcourse import exercises, train
    from mpcourse.course import cli

    recipes = list(train.RECIPES)
    found = [train.get_recipe(name).name for name in recipes]
    assert found == recipes, (found, recipes)
    labels = {slug: exercises.labels(slug) for slug in sorted({m.rsplit(".", 1)[-1] for m in public
                                                              if m.startswith("mpcourse.exercises.")})}
    benches = sorted(cli.BENCHES)
    assert all(callable(cli.bench_function(topic)) for topic in benches)
    return {"recipes": recipes, "labels": sorted(l for ls in labels.values() for l in ls), "benches": benches}


def run(index, first):
    pid = os.fork()
    if pid:
        return pid
    try:
        report = {"module": first, "result": use_the_registries(first)}
    except BaseException:
        report = {"module": first, "error": traceback.format_exc()}
    with open(os.path.join(sys.argv[1], f"{index}.json"), "w") as f:
        json.dump(report, f)
    os._exit(0)


jobs = list(enumerate([None] + public))
running = set()
width = max(1, min(4, os.cpu_count() or 1))
while jobs or running:
    while jobs and len(running) < width:
        running.add(run(*jobs.pop(0)))
    pid, _ = os.wait()
    running.discard(pid)
'''


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("imports")
    env = dict(os.environ, MPCOURSE_PROFILE="ci")
    done = subprocess.run(
        [sys.executable, "-c", ZYGOTE, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted(out.glob("*.json"), key=lambda p: int(p.stem))
    return [json.loads(p.read_text()) for p in found]


pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="the fresh interpreters are forked (POSIX only)"
)


def test_every_package_folder_is_a_package() -> None:
    """pkgutil (and so this test) walks only folders with an __init__.py: a folder without one would be skipped."""
    folders = {p.parent for p in PACKAGE.rglob("*.py")} - {PACKAGE}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"package folders without __init__.py: {missing}"


def test_every_module_imports_first_and_then_finds_everything(reports: list[dict]) -> None:
    reference, *children = reports
    assert reference["module"] is None and "error" not in reference, reference.get("error")
    expected = reference["result"]
    modules = [r["module"] for r in children]
    assert {
        "mpcourse",
        "mpcourse.train",
        "mpcourse.fp8.linear",
        "mpcourse.fp8.training",
        "mpcourse.bf16",
        "mpcourse.course.cli",
    } <= set(modules)
    failures = {r["module"]: r["error"] for r in children if "error" in r}
    assert not failures, "\n\n".join(f"importing {m} first:\n{tb}" for m, tb in failures.items())
    differs = [r["module"] for r in children if r["result"] != expected]
    assert not differs, (
        f"after importing these modules first, a registry differs from the complete one: {differs}"
    )


def test_the_reference_holds_every_recipe_check_and_benchmark(reports: list[dict]) -> None:
    expected = reports[0]["result"]
    # one recipe of each module that defines recipes, the built-in ones first
    assert expected["recipes"][:4] == ["fp32", "tf32", "fp16", "bf16"]
    assert {"pure_bf16_sr", "pure_bf16_kahan", "fp8_rowwise", "mxfp8", "torchao_tensorwise"} <= set(
        expected["recipes"]
    )
    assert set(CHAPTER_LABELS) <= set(expected["labels"]), sorted(
        set(CHAPTER_LABELS) - set(expected["labels"])
    )
    assert len(CHAPTER_LABELS) > 30
    assert {"formats", "fp8", "matmul", "train"} <= set(expected["benches"])
