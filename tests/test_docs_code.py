"""The docs' code runs (issue 19 item 5): every ```python block of README.md and docs/*.md is
executed, the blocks of one file in order in one namespace, in a temporary working folder; every
``sdediff`` command of their ```bash blocks runs too (a slow test), the commands of one file in
order in one folder, with the small step counts README.md states (:func:`quick`). A block that
must not run is preceded by a visible line ``*(not run by the doc tests: REASON)*``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"\*\(not run by the doc tests: (?P<reason>[^\n]+?)\)\*")


def code_blocks(page: Path, language: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, reason it does not run or None)`` of each ``language`` block of ``page``."""
    text = page.read_text()
    blocks = []
    block = re.compile(rf"(?P<before>[^\n]*)\n```{language}\n(?P<code>.*?)\n```", re.S)
    for match in block.finditer(text):
        skip = SKIP.search(match.group("before"))
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, match.group("code"), skip.group("reason") if skip else None))
    return blocks


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    return code_blocks(page, "python")


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


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
    """Each skip marker is visible (not an HTML comment), gives a reason of 3 words or more and
    stands right before a code block."""
    for page in PAGES:
        text = page.read_text()
        assert "<!-- not run" not in text, f"{page.name}: a hidden skip marker"
        for match in SKIP.finditer(text):
            assert len(match.group("reason").split()) >= 3, f"{page.name}: say why the block does not run"
            assert text.startswith("\n```", match.end()), f"{page.name}: a skip marker without its block"


# ------------------------------------------------------------------ the commands of bash blocks
#: Subcommands that train: their step count is cut to a hundredth (at least 2), or set to
#: QUICK_STEPS where the command gives none.
TRAINING = ("train", "train-classifier", "demo")
QUICK_STEPS, QUICK_NUM = 20, 64


def _subcommand(argv: list[str]) -> int:
    """Index of the subcommand in ``argv`` (``sdediff SUB ...`` or ``torchrun ... -m sdediff -- SUB``)."""
    if argv[0] == "sdediff":
        return 1
    return argv.index("--") + 1 if "--" in argv else argv.index("sdediff") + 1


def quick(argv: list[str]) -> list[str]:
    """The command as the test runs it (README.md says so): training steps / 100 (at least 2;
    QUICK_STEPS where none are given), and ``--num`` at most QUICK_NUM."""
    argv = list(argv)
    sub = argv[_subcommand(argv)]
    if "--num" in argv:
        k = argv.index("--num") + 1
        argv[k] = str(min(int(argv[k]), QUICK_NUM))
    if sub in TRAINING:
        if "--steps" in argv:
            k = argv.index("--steps") + 1
            argv[k] = str(max(2, int(argv[k]) // 100))
        else:
            argv += ["--steps", str(QUICK_STEPS)]
    return argv


def commands(page: Path) -> list[tuple[int, list[str], dict]]:
    """``(line, argv, environment)`` of each sdediff command in the runnable bash blocks of
    ``page`` (``sdediff ...``, ``torchrun ... -m sdediff -- ...``, after ``VAR=value`` prefixes;
    comments dropped). Other lines (``pip``, ``python benchmarks/...``) are not commands of
    sdediff's and do not run here."""
    found = []
    for line, code, reason in code_blocks(page, "bash"):
        if reason is not None:
            continue
        for k, text in enumerate(code.splitlines()):
            words = shlex.split(text, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                name, value = words.pop(0).split("=", 1)
                env[name] = value
            if words and (words[0] == "sdediff" or (words[0] == "torchrun" and "sdediff" in words)):
                found.append((line + k, words, env))
    return found


PAGES_WITH_COMMANDS = [p for p in PAGES if commands(p)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda p: p.name)
def test_bash_commands_run(page, tmp_path):
    for line, argv, env in commands(page):
        run = subprocess.run(quick(argv), cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "MPLBACKEND": "Agg", **env}, timeout=900)
        assert run.returncode == 0, (f"{page.name}:{line}: {shlex.join(quick(argv))} exited "
                                     f"{run.returncode}:\n{run.stderr[-2000:]}")


def test_quick_commands():
    assert quick(shlex.split("sdediff train --data digits --out r --steps 400 --resume")) == \
        shlex.split("sdediff train --data digits --out r --steps 4 --resume")
    assert quick(shlex.split("sdediff train --data gmm --out r")) == \
        shlex.split("sdediff train --data gmm --out r --steps 20")
    assert quick(shlex.split("torchrun --standalone -m sdediff -- sample --num 10000 --out a.npy")) == \
        shlex.split("torchrun --standalone -m sdediff -- sample --num 64 --out a.npy")
    page = ROOT / "docs" / "scale.md"
    assert any(env == {"OMP_NUM_THREADS": "1"} and argv[:2] == ["sdediff", "sample"]
               for _, argv, env in commands(page))


def _words(line: str) -> list[str]:
    """A command's words without ``python -m`` before pip and without ``--quiet``."""
    words = shlex.split(line, comments=True)
    if words[:3] == ["python", "-m", "pip"]:
        words = words[2:]
    return [w for w in words if w != "--quiet"]


def test_ci_runs_the_readme_setup():
    """.ci/run is the fresh-install check: each command of the README's first block (install,
    ``sdediff demo``, ``pytest``) is a line of it, in the same order (a line may add flags)."""
    setup = [w for w in map(_words, code_blocks(ROOT / "README.md", "bash")[0][1].splitlines()) if w]
    ci = [w for w in map(_words, (ROOT / ".ci" / "run").read_text().splitlines()) if w]
    position = 0
    for command in setup:
        matches = [k for k in range(position, len(ci)) if ci[k][:len(command)] == command]
        assert matches, f".ci/run lacks the README's `{shlex.join(command)}` (after line {position})"
        position = matches[0] + 1
