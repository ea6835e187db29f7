"""The documentation's examples run: every ```pycon block of docs/*.md and README.md, as doctests.

Blocks of one page share their names, in page order (a page reads as one session). ```python and
```bash blocks are illustrations (they name the reader's own data) and are not run."""

import doctest
import pathlib
import re
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
# A block may be indented (inside a list item): its fence's indentation is removed from its lines.
BLOCK = re.compile(r"^([ \t]*)```pycon\n(.*?)^\1```", re.S | re.M)


def examples(page):
    return "\n".join(textwrap.dedent(m.group(2)) for m in BLOCK.finditer(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page):
    text = examples(page)
    test = doctest.DocTestParser().get_doctest(text, {}, str(page.relative_to(ROOT)), str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page.name} failed (see above)"


def test_every_page_with_examples_is_found():
    found = {p.name for p in PAGES if examples(p)}
    assert {"getting-started.md", "concepts.md", "river.md", "model.md", "bptt.md", "README.md"} <= found
