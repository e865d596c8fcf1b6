"""Tools for course authors: keep chapter pairs in sync and every chapter's setup cell identical.

Each chapter is ``notebooks/SLUG.md`` (MyST markdown, the file people edit) paired by jupytext with
``notebooks/SLUG.ipynb`` (committed without outputs, so Colab and the website can open it). Every
chapter opens with the same two cells: an "Open in Colab" link (markdown cell tagged
``mpcourse-badge``) and the setup cell (code cell tagged ``mpcourse-setup``). Both are generated
from the repository address in ``_config.yml`` (the one place it is written) and the package
version (the pinned ref Colab installs from), so they never drift apart.

Run ``python -m mpcourse.course.authoring sync`` (``make sync``) after editing; ``check`` lists problems.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat

from .. import __version__

ROOT = Path(__file__).resolve().parents[2]
BADGE_TAG = "mpcourse-badge"
SETUP_TAG = "mpcourse-setup"

SETUP_TEMPLATE = """\
# Setup, the same in every chapter. On Colab it installs the course package (pinned, --no-deps:
# Colab's own torch, plotly and ipywidgets stay); everywhere it reports what this machine runs
# natively, emulated, or not at all, and which problem-size profile is active.
import sys

if "google.colab" in sys.modules:
    %pip install --quiet --no-deps "mpcourse @ git+{repository}@{ref}"

import mpcourse

caps = mpcourse.setup()"""

BADGE_TEMPLATE = (
    "[Open this chapter in Colab]({colab}) (free T4 GPU) or run it on your own machine; "
    "it adapts to whatever hardware it finds."
)


def course_config(root: Path = ROOT) -> dict[str, str]:
    """Repository address, branch and pinned ref, read from ``_config.yml`` and the package version."""
    import yaml

    with open(root / "_config.yml", encoding="utf-8") as f:
        config = yaml.safe_load(f)
    repo = config["repository"]
    url = repo["url"].rstrip("/")
    if not url.startswith("https://github.com/"):
        raise ValueError(f"_config.yml repository.url must be a GitHub address, got {url!r}")
    return {"repository": url, "branch": repo.get("branch", "main"), "ref": f"v{__version__}"}


def ref_problem(root: Path = ROOT) -> str | None:
    """Why Colab would open notebooks of another release than the one their setup cell installs, if so."""
    cfg = course_config(root)
    if cfg["branch"] != cfg["ref"]:
        return (
            f"_config.yml repository.branch is {cfg['branch']!r} but the package version pins {cfg['ref']!r}: "
            "Colab would open notebooks of one release and install the package of another; make them equal"
        )
    return None


def setup_source(root: Path = ROOT) -> str:
    """The setup cell every chapter must carry."""
    cfg = course_config(root)
    return SETUP_TEMPLATE.format(repository=cfg["repository"], ref=cfg["ref"])


def badge_source(slug: str, root: Path = ROOT) -> str:
    """The "Open in Colab" cell of chapter ``slug``."""
    cfg = course_config(root)
    path = cfg["repository"].removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{path}/blob/{cfg['ref']}/notebooks/{slug}.ipynb"
    return BADGE_TEMPLATE.format(colab=colab)


def chapters(root: Path = ROOT) -> list[Path]:
    """The MyST sources of every chapter."""
    return sorted((root / "notebooks").glob("*.md"))


def _tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def stamp(md: Path, root: Path = ROOT) -> bool:
    """Rewrite the badge and setup cells of one chapter source; True if the file changed."""
    nb = jupytext.read(md)
    badge, setup = _tagged(nb, BADGE_TAG), _tagged(nb, SETUP_TAG)
    if len(badge) != 1 or len(setup) != 1:
        raise ValueError(
            f"{md}: expected one markdown cell tagged {BADGE_TAG!r} and one code cell tagged "
            f"{SETUP_TAG!r}, found {len(badge)} and {len(setup)}"
        )
    new_badge, new_setup = badge_source(md.stem, root), setup_source(root)
    if badge[0].source == new_badge and setup[0].source == new_setup:
        return False
    badge[0].source, setup[0].source = new_badge, new_setup
    jupytext.write(nb, md, fmt="md:myst")
    return True


def _clean(nb: nbformat.NotebookNode) -> None:
    """Drop outputs, execution counts and saved widget state (the website build executes afresh).

    Cell ids are derived from the cell's content, so re-syncing an unchanged chapter rewrites nothing
    and editing one cell changes one id.
    """
    nb.metadata.pop("widgets", None)
    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def sync(root: Path = ROOT, only: list[str] | None = None) -> list[Path]:
    """Stamp every chapter (those named in ``only``) and write its paired, output-free ``.ipynb``.

    Returns the files changed.
    """
    changed = []
    known = chapters(root)
    unknown = sorted(set(only or ()) - {md.stem for md in known})
    if unknown:
        raise ValueError(
            f"no chapter {', '.join(unknown)}; chapters are {', '.join(md.stem for md in known)}"
        )
    for md in known:
        if only and md.stem not in only:
            continue
        if stamp(md, root):
            changed.append(md)
        nb = jupytext.read(md)
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,md:myst"
        _clean(nb)
        target = md.with_suffix(".ipynb")
        text = jupytext.writes(nb, fmt="ipynb")
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(target)
    return changed


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, list[str], str]]:
    """What a pair must agree on, cell by cell: type, tags and source."""
    return [(c.cell_type, list(c.get("metadata", {}).get("tags", [])), c.source.strip()) for c in nb.cells]


def problems(root: Path = ROOT) -> list[str]:
    """What is out of order in the chapter pairs (empty when all is well)."""
    found = [p for p in [ref_problem(root)] if p]
    for md in chapters(root):
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            found.append(f"{md.name} has no paired {ipynb.name}: run `make sync`")
            continue
        source, paired = jupytext.read(md), nbformat.read(ipynb, as_version=4)
        if _cells(source) != _cells(paired):
            found.append(f"{md.name} and {ipynb.name} differ: run `make sync` and commit both")
        if any(c.get("outputs") for c in paired.cells if c.cell_type == "code"):
            found.append(
                f"{ipynb.name} carries outputs: run `make sync` (notebooks are committed output-free)"
            )
        if "widgets" in paired.metadata:
            found.append(f"{ipynb.name} carries metadata.widgets: run `make sync`")
        badge, setup = _tagged(source, BADGE_TAG), _tagged(source, SETUP_TAG)
        if [c.source for c in badge] != [badge_source(md.stem, root)] or [c.source for c in setup] != [
            setup_source(root)
        ]:
            found.append(
                f"{md.name}: the badge or setup cell is missing or differs from the template: run `make sync`"
            )
    for ipynb in sorted((root / "notebooks").glob("*.ipynb")):
        if not ipynb.with_suffix(".md").exists():
            found.append(f"{ipynb.name} has no paired .md source")
    return found


def refresh_execution_cache(root: Path = ROOT, profile: str | None = None) -> bool:
    """Drop the website's execution cache when what the chapters' outputs depend on has changed.

    Jupyter Book re-executes a chapter only when the chapter's own text changes, but its outputs also
    depend on the ``mpcourse`` package it imports and on the problem-size profile. The cache is kept
    under a key made of both; a different key empties it, with Sphinx's saved environment, so the
    next build reads and executes every chapter. Returns True if anything was emptied.
    """
    from .. import sizes as profiles

    digest = hashlib.sha256((profile or profiles.current()).encode())
    for path in sorted((root / "mpcourse").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    build = root / "_build"
    key, stamp = digest.hexdigest(), build / ".jupyter_cache.key"
    if stamp.exists() and stamp.read_text() == key:
        return False
    # Sphinx's own environment must go too: it would otherwise see no changed source and read none.
    stale = [build / ".jupyter_cache", build / ".doctrees", build / "jupyter_execute"]
    emptied = any(path.exists() for path in stale)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return emptied


def prime_execution_cache(executed: dict[str, Path], root: Path = ROOT) -> dict[str, str]:
    """Give the website build the outputs of chapters that were already executed elsewhere.

    The tests execute every chapter under nbgrader with the reference solutions, and the website
    build would execute each one again. The graded notebook runs exactly the chapter's code cells,
    in order, in the same profile, so its outputs are the outputs the build would compute. This
    copies them, cell by cell, onto the chapter's own notebook and stores that in the build's
    execution cache (``_build/.jupyter_cache``), where Jupyter Book finds it by the hash of the
    code cells and their metadata and skips the execution.

    ``executed`` maps a chapter slug to an executed notebook. A chapter is primed only when its
    code cells and the executed ones have the same sources in the same order and none raised;
    anything else is left for the build to execute. Returns ``{slug: why}`` for each chapter
    left out ("primed" for the others). Call it after `refresh_execution_cache`.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(root / "_build" / ".jupyter_cache"))
    outcome = {}
    for slug, path in executed.items():
        chapter_path = root / "notebooks" / f"{slug}.ipynb"
        chapter = nbformat.read(chapter_path, as_version=4)
        ran = nbformat.read(path, as_version=4)
        mine = [c for c in chapter.cells if c.cell_type == "code"]
        theirs = [c for c in ran.cells if c.cell_type == "code"]
        if [c.source for c in mine] != [c.source for c in theirs]:
            outcome[slug] = "its code cells differ from the executed notebook's"
            continue
        if any(o.get("output_type") == "error" for c in theirs for o in c.get("outputs", [])):
            outcome[slug] = "a cell raised in the executed notebook"
            continue
        for cell, done in zip(mine, theirs):
            cell.outputs = done.get("outputs", [])
            cell.execution_count = done.get("execution_count")
        for key in ("widgets", "language_info"):
            if key in ran.metadata:
                chapter.metadata[key] = ran.metadata[key]
        cache.cache_notebook_bundle(
            CacheBundleIn(chapter, str(chapter_path), data={"primed_from": str(path)}),
            check_validity=False,
            overwrite=True,
        )
        outcome[slug] = "primed"
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpcourse.course.authoring", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "command",
        choices=["sync", "check", "cache"],
        help="sync: stamp and pair; check: list problems; cache: drop the website's stale execution cache",
    )
    parser.add_argument("chapters", nargs="*", help="sync: only these chapters (slugs); default: all")
    args = parser.parse_args(argv)
    if args.chapters and args.command != "sync":
        parser.error("chapters can be named only with sync")
    if args.command == "cache":
        if refresh_execution_cache():
            print(
                "the package or the profile changed since the last build: every chapter will be executed again"
            )
        return 0
    if args.command == "sync":
        try:
            paths = sync(only=args.chapters or None)
        except ValueError as exc:
            parser.error(str(exc))
        for path in paths:
            print(f"updated {path.relative_to(ROOT)}")
        return 0
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
