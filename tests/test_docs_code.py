"""The tutorials read as plain Markdown and show exactly the code the tests run.

Each tutorial inlines its example script in a block opened by
```` ```python title="examples/<script>.py" ````: that block must equal the script, which
``tests/test_examples.py`` runs. Other Python blocks of a tutorial are executed here. No page
may depend on an include (``--8<--``), which a repository host shows as that line.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
PAGES = [*TUTORIALS, ROOT / "docs" / "getting-started.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "bad_input.md"]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


def _blocks(page: pathlib.Path) -> list[tuple[str, str, str]]:
    """``(language, info after it, code)`` of every fenced block of a page."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(page.read_text())]


def _title(info: str) -> str | None:
    m = re.fullmatch(r'title="([^"]+)"', info)
    return m.group(1) if m else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_depends_on_an_include(page):
    assert "--8<--" not in page.read_text(), f"{page.name} includes a file: inline it"


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.name)
def test_the_code_shown_is_the_example_that_runs(page):
    shown = [_title(info) for lang, info, _ in _blocks(page) if lang == "python" and _title(info)]
    for lang, info, code in _blocks(page):
        title = _title(info)
        if lang == "python" and title is not None:
            script = ROOT / title
            assert script.is_file(), f"{page.name} shows {title}, which does not exist"
            assert code == script.read_text(), f"{page.name} shows an outdated copy of {title}"
    # Every command the page tells the reader to run names a script it shows.
    for lang, _, code in _blocks(page):
        if lang == "bash":
            for script in re.findall(r"python (examples/\S+\.py)", code):
                assert script in shown, f"{page.name} runs {script} without showing it"


def test_every_example_is_shown_in_a_tutorial():
    shown = {_title(info) for page in TUTORIALS for lang, info, _ in _blocks(page) if lang == "python"}
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}
    assert examples <= shown, f"examples not shown in any tutorial: {sorted(examples - shown)}"


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.name)
def test_the_other_python_blocks_of_a_tutorial_run(page, tmp_path, monkeypatch):
    blocks = [code for lang, info, code in _blocks(page) if lang == "python" and _title(info) is None]
    if not blocks:
        pytest.skip("no free-standing code")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:  # in order, sharing names, as a reader would paste them
        exec(compile(code, f"{page.name}", "exec"), namespace)
