"""The glossary: every term is linked from the course, every link has a term, every chapter links some.

Chapters link a term with MyST's ``{term}`` role on its first use (``{term}`subnormals <subnormal
number>``` links the entry "subnormal number"); the website build (with ``-W``) fails on a link
whose term does not exist, but not on a term nobody links, nor on a chapter that links none. This
test checks all three from the sources, without building the site.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

GLOSSARY = ROOT / "book" / "glossary.md"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.md"))
PAGES = sorted(p for p in (ROOT / "book").glob("*.md") if p != GLOSSARY)

ROLE = re.compile(r"\{term\}`([^`]+)`")
DOC = re.compile(r"\{doc\}`([^`<]*<)?([^`>]+)>?`")
CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```\s*$", re.DOTALL | re.MULTILINE)
#: At least this many entries, as the glossary's issue asks.
MIN_ENTRIES = 60


def entries(text: str) -> list[tuple[list[str], str]]:
    """The entries of the ``{glossary}`` directive: (its terms, its definition), in file order."""
    found = re.search(r"^```\{glossary\}\n(.*?)^```\s*$", text, re.DOTALL | re.MULTILINE)
    assert found, "book/glossary.md has no ```{glossary} directive"
    out: list[tuple[list[str], str]] = []
    for line in found.group(1).splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        if line[0].isspace():
            assert out, f"a definition before any term: {line!r}"
            out[-1] = (out[-1][0], f"{out[-1][1]} {line.strip()}".strip())
        elif out and not out[-1][1]:
            out[-1][0].append(line.strip())  # a second name of the same entry
        else:
            out.append(([line.strip()], ""))
    return out


def links(path: Path) -> list[str]:
    """The term targets that ``path`` links, outside code cells, lower-cased (Sphinx matches them so)."""
    prose = CODE_CELL.sub("", path.read_text(encoding="utf-8"))
    return [(m.split("<")[-1].rstrip(">") if "<" in m else m).strip().lower() for m in ROLE.findall(prose)]


GLOSSARY_ENTRIES = entries(GLOSSARY.read_text(encoding="utf-8"))
NAMES = {name.lower() for terms, _ in GLOSSARY_ENTRIES for name in terms}
LINKED = {path.relative_to(ROOT).as_posix(): links(path) for path in [*CHAPTERS, *PAGES]}


def test_the_glossary_has_enough_entries_each_defined_once() -> None:
    assert len(GLOSSARY_ENTRIES) >= MIN_ENTRIES, (
        f"{len(GLOSSARY_ENTRIES)} entries; the course needs {MIN_ENTRIES}"
    )
    names = [name.lower() for terms, _ in GLOSSARY_ENTRIES for name in terms]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


@pytest.mark.parametrize("terms, definition", GLOSSARY_ENTRIES, ids=[t[0] for t, _ in GLOSSARY_ENTRIES])
def test_every_entry_is_short_and_names_the_chapter_that_teaches_it(
    terms: list[str], definition: str
) -> None:
    taught = re.findall(r"Taught in (\{doc\}`[^`]+`)\.$", definition)
    assert taught, f"{terms[0]!r}: the definition must end 'Taught in {{doc}}`../notebooks/<chapter>`.'"
    target = DOC.search(taught[0]).group(2)
    assert (GLOSSARY.parent / f"{target}.md").resolve().exists(), (
        f"{terms[0]!r} points at a missing page: {target}"
    )
    body = definition[: definition.rfind("Taught in")]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(`$])", body.strip()) if s]
    assert 1 <= len(sentences) <= 2, (
        f"{terms[0]!r}: keep a definition to one or two sentences, got {sentences}"
    )


def test_every_term_link_has_an_entry() -> None:
    dangling = {page: sorted(set(t) - NAMES) for page, t in LINKED.items() if set(t) - NAMES}
    assert not dangling, f"{{term}} links without a glossary entry: {dangling}"


def test_every_entry_is_linked_from_the_course() -> None:
    everywhere = {t for targets in LINKED.values() for t in targets}
    unlinked = [terms[0] for terms, _ in GLOSSARY_ENTRIES if not {n.lower() for n in terms} & everywhere]
    assert not unlinked, f"glossary terms no page links with {{term}}: {unlinked}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_links_the_glossary(chapter: Path) -> None:
    assert LINKED[chapter.relative_to(ROOT).as_posix()], (
        f"{chapter.name} links no glossary term with {{term}}"
    )


def test_a_link_in_a_code_cell_does_not_count(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Prose with {term}`ulp`.\n\n```{code-cell} ipython3\n# {term}`NaN` in a comment\n```\n")
    assert links(page) == ["ulp"]
    page.write_text("A {term}`Subnormals <subnormal number>` link.\n")
    assert links(page) == ["subnormal number"]


def test_the_glossary_is_in_the_table_of_contents() -> None:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text(encoding="utf-8"))
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    assert "book/glossary" in files
