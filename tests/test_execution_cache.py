"""The website build's execution cache: emptied when the package changes, primed from executed notebooks."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
from jupyter_cache import get_cache

from mpcourse.course import authoring


def _chapter(root: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(6 * 7)")
    cell.metadata["tags"] = ["mpcourse-setup"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell, nbformat.v4.new_code_cell("x = 1")]
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / "notebooks" / "demo.ipynb")
    return nb


def _executed(nb: nbformat.NotebookNode, where: Path, output) -> Path:  # type: ignore[no-untyped-def]
    ran = copy.deepcopy(nb)
    ran.cells[1].outputs = [output]
    ran.cells[1].metadata["nbgrader"] = {"grade": False}  # a grader's metadata does not matter
    ran.metadata["widgets"] = {"state": {}}
    path = where / "ran.ipynb"
    nbformat.write(ran, path)
    return path


def test_a_primed_chapter_is_found_by_its_own_cells_with_the_executed_outputs(tmp_path) -> None:
    nb = _chapter(tmp_path)
    output = nbformat.v4.new_output("stream", name="stdout", text="42\n")
    outcome = authoring.prime_execution_cache({"demo": _executed(nb, tmp_path, output)}, tmp_path)
    assert outcome == {"demo": "primed"}
    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    # Jupyter Book looks the chapter up by the hash of its own code cells and their metadata.
    _, merged = cache.merge_match_into_notebook(nbformat.read(tmp_path / "notebooks" / "demo.ipynb", 4))
    assert merged.cells[1].outputs[0]["text"] == "42\n"
    assert merged.metadata["widgets"] == {"state": {}}


def test_a_chapter_whose_code_changed_or_raised_is_left_for_the_build(tmp_path) -> None:
    nb = _chapter(tmp_path)
    output = nbformat.v4.new_output("stream", name="stdout", text="42\n")
    changed = copy.deepcopy(nb)
    changed.cells[2].source = "x = 2"
    nbformat.write(changed, tmp_path / "notebooks" / "demo.ipynb")
    assert authoring.prime_execution_cache({"demo": _executed(nb, tmp_path, output)}, tmp_path) == {
        "demo": "its code cells differ from the executed notebook's"
    }
    nbformat.write(nb, tmp_path / "notebooks" / "demo.ipynb")
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="no", traceback=[])
    assert authoring.prime_execution_cache({"demo": _executed(nb, tmp_path, error)}, tmp_path) == {
        "demo": "a cell raised in the executed notebook"
    }
    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    assert not cache.list_cache_records()
