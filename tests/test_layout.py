"""The repository's top level is the project's fixed layout: nothing else is committed there."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {
    "manage.py", "crm_site", "customers", "segments", "campaigns", "lifecycle", "templates", "static", "tests",
    "pyproject.toml", "docker-compose.yml", "README.md", "Makefile", ".ci", "docs", "bench", ".gitignore",
}


def test_the_top_level_holds_exactly_the_agreed_layout():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top_level = {path.split("/", 1)[0] for path in tracked.splitlines()}
    assert top_level == LAYOUT
