"""The API reference (issue 19 item 6): generated from the docstrings by mkdocs + mkdocstrings
(mkdocs.yml), it builds without a warning, covers every public module, and every relative link of
the guide points to a file that exists."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import sdediff

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Modules that are not API: the command's own parsers (docs/cli.md documents the command).
NOT_API = ("sdediff.cli", "sdediff.__main__", "sdediff.pretrained")


def test_the_reference_builds_without_warnings(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                          str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                         capture_output=True, text=True, cwd=ROOT)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "WARNING" not in log, log[-3000:]
    page = (tmp_path / "site" / "api" / "ode" / "index.html").read_text()
    # the docstrings themselves are rendered, not just the headings
    assert "log_likelihood" in page and "bits/dim" in page


def test_every_public_module_is_in_the_reference():
    listed = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        listed |= set(re.findall(r"^::: (\S+)", page.read_text(), re.M))
    modules = {m.name for m in pkgutil.walk_packages(sdediff.__path__, "sdediff.")}
    public = {m for m in modules | {"sdediff"} if not m.startswith(NOT_API)
              and not any(part.startswith("_") for part in m.split("."))}
    assert public - listed == set(), f"modules missing from docs/api/: {sorted(public - listed)}"
    assert listed - public == set(), f"docs/api/ names modules that do not exist: {sorted(listed - public)}"


def test_relative_links_resolve():
    link = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)")
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in PAGES
              for target in link.findall(page.read_text())
              if not (page.parent / target).exists()]
    assert broken == []
