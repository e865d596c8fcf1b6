"""No figure typed into prose: a multiplier, percentage or throughput is computed on the page or cited.

A number a chapter measured belongs in the cell that measured it, where it is printed from the
measurement and changes with the machine; typed into the prose beside it, it goes stale the next
time anyone runs the page, and on a learner's machine it is simply wrong. A number from a paper or
a datasheet belongs in a sentence that cites it. This test reads every page's prose (outside code
cells, code, math and links) and flags, sentence by sentence or table row by table row:

* multipliers: ``14.8x``, ``3×``, "about fifteen times faster";
* percentages: ``12%``, "12 percent";
* throughputs and bandwidths: ``989.5 TFLOP/s``, ``3.35 TB/s``, ``400 GB/s``;

unless the sentence carries a ``{cite}`` (the figure's source) or the figure is a tolerance the page
states about its own checks ("within 10%"). The errata page's column "The article says" quotes the
seed article, whose figures are wrong by design, so it is left out. A flagged figure is fixed by
computing it in a cell, by writing it as math from quantities the page defines, or by citing it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = sorted([*(ROOT / "notebooks").glob("*.md"), *(ROOT / "book").glob("*.md")])

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1\s*$", re.DOTALL | re.MULTILINE)
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
INLINE_MATH = re.compile(r"(?<![\\$])\$[^$\n]+\$")
ROLE_MATH = re.compile(r"\{math\}`[^`]*`")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
DIRECTIVE_OPTION = re.compile(r"^\s*:[\w-]+:.*$", re.MULTILINE)

WORD_NUMBERS = (
    "two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    "twenty|thirty|forty|fifty|hundred|thousand"
)
COMPARATIVE = (
    "faster|slower|more|less|fewer|larger|smaller|higher|lower|bigger|as much|as many|as fast|as large|"
    "the speed|the throughput|the memory|the rate|the bandwidth|cheaper|wider|narrower"
)
NUMBER = r"\d+(?:[.,]\d+)?"
FLAGGED = {
    "multiplier": re.compile(rf"(?<![\w.]){NUMBER}\s?[x×](?![\w×]|\s?\d)"),
    "multiplier in words": re.compile(
        rf"\b(?:{NUMBER}|{WORD_NUMBERS})(?:-fold|\s+times\s+(?:{COMPARATIVE}))\b", re.IGNORECASE
    ),
    "percentage": re.compile(rf"(?<![\w.]){NUMBER}\s?(?:%|per\s?cent\b)", re.IGNORECASE),
    "throughput": re.compile(rf"(?<![\w.]){NUMBER}\s?(?:[KMGTP]FLOP/?s|[KMGTP]FLOPS|TOPS|[KMGT]B/s)\b"),
}
#: Tolerances a page states about its own checks, and sentences that cite their source.
EXEMPT = re.compile(
    rf"\{{cite(?::\w+)?\}}|\bwithin\s+(?:about\s+|roughly\s+)?{NUMBER}\s?%|\bbudgets? (?:of|from)\s+{NUMBER}\s?%",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z(*_\[])")
#: Columns of a table that quote the seed article, and are wrong on purpose.
QUOTED_COLUMNS = ("the article says", "the seed says")


def _keep_lines(match: re.Match[str]) -> str:
    """What replaces a removed block: its line breaks, so that reported line numbers stay true."""
    return "\n" * match.group(0).count("\n")


def prose(text: str) -> str:
    """The page's prose, line for line: no front matter, code cells, fences, math, inline code or URLs."""
    for pattern in (FRONT_MATTER, FENCE, COMMENT, DISPLAY_MATH, DIRECTIVE_OPTION):
        text = pattern.sub(_keep_lines, text)
    for pattern in (ROLE_MATH, INLINE_MATH, INLINE_CODE, LINK_TARGET):
        text = pattern.sub(" ", text)
    return text


def units(text: str) -> list[tuple[int, str]]:
    """Sentences of paragraphs and rows of tables, each with the line it starts on (1-based)."""
    out: list[tuple[int, str]] = []
    quoted: set[int] = set()
    paragraph: list[str] = []
    start = 0

    def close() -> None:
        if paragraph:
            out.extend((start, s) for s in SENTENCE_END.split(" ".join(paragraph)))
            paragraph.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("|"):
            close()
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if any(c.lower() in QUOTED_COLUMNS for c in cells):
                quoted = {i for i, c in enumerate(cells) if c.lower() in QUOTED_COLUMNS}
                continue
            out.append((number, " | ".join(c for i, c in enumerate(cells) if i not in quoted)))
            continue
        quoted = set()  # a table's quoted columns end with the table
        if not stripped or stripped.startswith("#"):
            close()
            if stripped:
                out.append((number, stripped))
        else:
            if not paragraph:
                start = number
            paragraph.append(stripped)
    close()
    return out


def typed_figures(text: str) -> list[str]:
    """Every flagged figure of ``text`` as ``line N: kind 'match' in: sentence``."""
    found = []
    for line, unit in units(prose(text)):
        if EXEMPT.search(unit):
            continue
        for kind, pattern in FLAGGED.items():
            for match in pattern.finditer(unit):
                found.append(f"line ~{line}: {kind} {match.group(0)!r} in: {unit[:160]}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_uncited_figure_is_typed_into_prose(page: Path) -> None:
    figures = typed_figures(page.read_text(encoding="utf-8"))
    assert not figures, (
        f"{page.relative_to(ROOT)}: figures typed into prose, neither computed on the page nor cited "
        "(print them from a cell, write them as math, or cite their source):\n" + "\n".join(figures)
    )


@pytest.mark.parametrize(
    "sentence",
    [
        "On an H100, fp8 is 14.8x faster than fp32.",
        "The step runs about fifteen times faster in bf16.",
        "A 2× speedup on the attention.",
        "MFU was 12% on this run.",
        "It reaches 989.5 TFLOP/s in dense bf16.",
        "The card moves 3.35 TB/s from HBM.",
        "Autocast saves 30 percent of the memory.",
        "Tensor cores give a 4-fold gain.",
        "| A100 | bf16 | 312 TFLOP/s |",
    ],
)
def test_typed_figures_are_flagged(sentence: str) -> None:
    assert typed_figures(sentence), sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "The H100 datasheet gives 989.5 TFLOP/s for dense bf16 {cite}`nvidia-h100-datasheet`.",
        "The two clocks agree within 10% here.",
        "The ratio is $14.8\\times$, computed from the table above.",
        "Run `x = a * 3x` and see.",
        "```{code-cell} ipython3\nprint(f'{r:.1f}x faster')\n```",
        "The pattern 0x3F800000 is one, and a 16x16 tile holds 256 values.",
        "A 2:4 pattern keeps two of every four weights; x86 CPUs run it too.",
        "See [the datasheet](https://example.com/12%25-faster).",
        "| § | The article says | In fact |\n|---|---|---|\n| 1.2 | it is 3x faster | it is not |",
    ],
)
def test_computed_cited_and_coded_figures_pass(sentence: str) -> None:
    assert not typed_figures(sentence), typed_figures(sentence)
