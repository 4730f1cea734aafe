"""The documentation site renders what its sources mean, and the product text speaks of the product.

Python-Markdown (which MkDocs uses) is stricter than GitHub: a list needs a blank line before it, and a block
inside a list item (a nested list, a second paragraph, a fenced code block) needs the item's indentation, 4
spaces. Otherwise the list collapses into a run-on paragraph, or a code block cuts it in two and the numbering
starts again. The API reference is rendered from Google-style docstrings, in which reST roles
(``:class:`...```) and ``Example::`` literal blocks show raw. These tests read the HTML of the strict build of
``tests/test_docs.py`` (the same fixture), and the Markdown sources for what the HTML cannot show.
"""

from __future__ import annotations

import html
import inspect
import re
from pathlib import Path

import pytest

from tests.test_docs import ROOT, site  # noqa: F401  (`site`: the strict build, a fixture)

PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)
# A line of a paragraph that starts like a list item: the list it begins was not parsed as one.
LIST_ITEM = re.compile(r"(?:\d+\.|[-*+])[ \t]+\S")
LIST_ITEM_LINE = re.compile(r"\n[ \t]*" + LIST_ITEM.pattern)
# An ordered list, a code block, and an ordered list again: the code block was not indented into the item.
SPLIT_LIST = re.compile(r'</ol>\s*<div class="highlight">(?:(?!<ol>|</div>).)*</div>\s*<ol>', re.S)
# reST roles and `::` literal-block markers, which neither Markdown nor mkdocstrings' Google parser understands.
REST = re.compile(r":(?:class|mod|func|meth|data|attr|exc|obj|const|ref|py:\w+):`|\w::(?=\s|$)", re.M)
# Product text names what the user gets, never the tracker's issue numbers or the hardware a build was lent.
PRODUCT_TEXT_FILES = ["README.md", "docs/**/*.md", "lightning_geo/**/*.py", "benchmarks/*.py"]
NOT_PRODUCT_TEXT = re.compile(r"\bissues? #?\d+|\blent\b|\bthis session\b", re.I)


def _text(fragment: str) -> str:
    """The text of an HTML fragment, with its inline code in backticks."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"</?code>", "`", fragment)))


def collapsed_lists(page: str) -> list[str]:
    """The paragraphs of an HTML page that hold a list Python-Markdown did not parse, and split lists."""
    found = [_text(p)[:120] for p in PARAGRAPH.findall(page) if LIST_ITEM_LINE.search(_text(p))]
    found += [f"a list cut in two by a code block: {_text(m)[:80]!r}" for m in SPLIT_LIST.findall(page)]
    found += [_text(p)[:120] for p in PARAGRAPH.findall(page) if "```" in p]
    return found


def raw_rest(page: str) -> list[str]:
    """Raw reST roles and ``::`` markers in an HTML page, with some context."""
    text = _text(page)
    return [text[max(0, m.start() - 50) : m.end() + 50].replace("\n", " ") for m in REST.finditer(text)]


def misindented_blocks(markdown: str) -> list[str]:
    """Lines of a Markdown page (outside code blocks) that Python-Markdown reads differently from GitHub: a
    nested list, a fenced code block or a paragraph after a blank line inside a list item, indented by 1 to 3
    spaces (a list item's blocks need 4), and a list item right after such a block (it needs a blank line).
    """
    found, fence, in_list, after_blank, in_block = [], None, False, False, False
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        misindented = 0 < indent < 4 and (in_list or stripped.startswith(("```", "~~~")))
        if fence is not None:
            fence = None if stripped.startswith(fence) else fence
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            if misindented:
                found.append(f"line {number}: fenced code indented by {indent}: {line.strip()!r}")
        elif misindented and LIST_ITEM.match(stripped):
            found.append(f"line {number}: nested list item indented by {indent}: {line.strip()[:60]!r}")
        elif misindented and after_blank:
            found.append(f"line {number}: paragraph of a list item indented by {indent}: {line.strip()[:60]!r}")
        elif indent == 0 and in_block and LIST_ITEM.match(stripped):
            found.append(f"line {number}: list item right after an item's indented block: needs a blank line before")
        if stripped and indent == 0:
            in_list = bool(LIST_ITEM.match(stripped))
        in_block = bool(stripped) and in_list and (in_block or (after_blank and indent > 0))
        after_blank = not stripped
    return found


def _pages(site_dir: Path) -> list[Path]:
    return sorted(site_dir.rglob("*.html"))


def test_no_collapsed_lists_in_the_built_site(site: Path) -> None:  # noqa: F811
    faults = [f"{p.relative_to(site)}: {f}" for p in _pages(site) for f in collapsed_lists(p.read_text("utf-8"))]
    assert not faults, "lists that render as paragraphs (a blank line before, 4-space indents inside):\n" + "\n".join(
        faults
    )


def test_no_raw_rest_in_the_built_site(site: Path) -> None:  # noqa: F811
    faults = [f"{p.relative_to(site)}: {f}" for p in _pages(site) for f in raw_rest(p.read_text("utf-8"))]
    assert not faults, (
        "reST in the rendered docs (use [`Name`][lightning_geo.path.Name] or backticks, and an `Example:` section "
        "with a fenced block):\n" + "\n".join(faults)
    )


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))])
def test_list_blocks_are_indented_for_python_markdown(page: str) -> None:
    faults = misindented_blocks((ROOT / page).read_text(encoding="utf-8"))
    assert not faults, f"{page}:\n" + "\n".join(faults)


def test_docstring_list_blocks_are_indented_for_python_markdown() -> None:
    # mkdocstrings renders docstrings with Python-Markdown too: the same rules as the pages.
    griffe = pytest.importorskip("griffe", reason="the docs builder is not installed")
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    todo, faults = [loader.load("lightning_geo")], []
    while todo:
        obj = todo.pop()
        if obj.docstring is not None:
            faults += [f"{obj.path}: {fault}" for fault in misindented_blocks(obj.docstring.value)]
        todo += [member for member in obj.members.values() if not member.is_alias]
    assert not faults, "\n".join(faults)


def test_recipe_signature_shows_the_default_value(site: Path) -> None:  # noqa: F811
    # The API reference shows a default as written in the signature: the value, not the constant's name.
    from lightning_geo.recipes import SEQ_LEN_WARMUP_DEADLINE, recipe

    assert inspect.signature(recipe).parameters["seq_len_warmup"].default == SEQ_LEN_WARMUP_DEADLINE
    page = _text((site / "api" / "lightning_geo" / "index.html").read_text(encoding="utf-8"))
    assert f"seq_len_warmup: float | str = {SEQ_LEN_WARMUP_DEADLINE}" in page


def test_product_text_names_no_issue_numbers_or_lent_hardware() -> None:
    faults = []
    for pattern in PRODUCT_TEXT_FILES:
        for path in sorted(ROOT.glob(pattern)):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if NOT_PRODUCT_TEXT.search(line):
                    faults.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not faults, "say what the user needs instead (e.g. 'not measured on a GPU yet'):\n" + "\n".join(faults)


def test_the_checks_catch_the_faults() -> None:
    # What the unfixed site rendered: a list after a paragraph line, a code block that restarted the numbering,
    # a nested list indented by 3, a role and an `Example::`.
    run_on = "<p>Periodic work, in the averages above or not:\n- <code>DynamicCurriculum</code> reads its losses</p>"
    split = '<ol>\n<li>Train</li>\n</ol>\n<div class="highlight"><pre><code>make\n</code></pre></div>\n<ol>\n<li>See'
    assert collapsed_lists(run_on) and collapsed_lists(split)
    assert not collapsed_lists("<ol>\n<li>Train</li>\n<li>See</li>\n</ol>\n<p>One line,\nand the next.</p>")
    assert raw_rest("<p>A :class:<code>~lightning_geo.tuning.SearchSpace</code> maps</p>")
    assert raw_rest("<p>Example::</p>") and not raw_rest("<p>a <code>dict[str, int]</code>: 2</p>")
    assert misindented_blocks("1. **Train**:\n\n   ```bash\n   make demo\n   ```\n")
    assert misindented_blocks("1. It reads NVML:\n   - NVLink state;\n")
    assert misindented_blocks("1. It reads NVML.\n\n   NVML indices are mapped by UUID.\n")
    assert misindented_blocks("1. It reads NVML.\n\n    NVML indices are mapped by UUID.\n2. Plans\n")
    assert not misindented_blocks("1. **Train**:\n\n    ```bash\n    make demo\n    ```\n    - nested\n")
    assert NOT_PRODUCT_TEXT.search("Targets (issue 23)") and NOT_PRODUCT_TEXT.search("no GPU was lent")
    assert not NOT_PRODUCT_TEXT.search("silent and excellent; pytorch #18404")
