"""The docs' code runs (issue 19 item 5): every ```python block of README.md and docs/*.md is
executed, the blocks of one file in order in one namespace, in a temporary working folder. A block
that must not run is preceded by a line ``<!-- not run: REASON -->`` that states why."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
SKIP = re.compile(r"<!-- not run: (?P<reason>[^>]+?) -->")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, reason it does not run or None)`` of each python block of ``page``."""
    text = page.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        skip = SKIP.search(match.group("before"))
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, match.group("code"), skip.group("reason") if skip else None))
    return blocks


#: Pages whose code takes minutes (adaptive solves on the digits model, fitted grids): slow tests,
#: until their examples are made cheap (issue 19).
SLOW_PAGES = {"encoding.md", "fast_solvers.md"}
PAGES_WITH_CODE = [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p
                   for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: getattr(p, "name", str(p)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    threads = torch.get_num_threads()
    try:
        for line, code, reason in python_blocks(page):
            if reason is not None:
                assert len(reason.split()) >= 3, f"{page.name}:{line}: say why the block does not run"
                continue
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page.name}, the python block at line {line}: "
                                     f"{type(error).__name__}: {error}") from error
    finally:
        torch.set_num_threads(threads)


def test_skip_markers_give_a_reason():
    for page in PAGES:
        for match in re.finditer(r"<!-- not run", page.read_text()):
            assert SKIP.match(page.read_text(), match.start()), f"{page.name}: a skip marker without reason"
