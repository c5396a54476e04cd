"""The manual: a short README, links that resolve inside the repository, and generated pages
that match the code that generates them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_every_link_resolves_inside_the_repository():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() or ROOT not in path.parents and path != ROOT:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert len(PAGES) >= 10


def test_generated_pages_are_current():
    proc = subprocess.run([sys.executable, "-m", "reports.docs", "check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_schema_lists_every_row_field():
    from dataclasses import fields

    from bench.contracts import Row

    text = (ROOT / "docs" / "schema.md").read_text()
    assert all(f"| `{f.name}` |" in text for f in fields(Row))
