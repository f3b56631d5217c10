"""Prose never drifts from code.

A fenced block whose info string names a file, for example

    ```python title="tasks.py"

must be that file's text (paths are relative to the README). With `region="name"` it must
be the lines between `# region name` and `# endregion name` in that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tutorial.runner import ROOT, find_steps

STEPS = find_steps()
READMES = [ROOT / "README.md", *(step.path / "README.md" for step in STEPS)]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
FILE_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|toml|yaml|html|sql))\b")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(readme: Path) -> list[tuple[dict[str, str], str]]:
    """(attributes of the info string, body) for each fenced block."""
    blocks = []
    for info, body in FENCE.findall(readme.read_text()):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', info))
        attrs["lang"] = info.split(" ", 1)[0]
        blocks.append((attrs, body))
    return blocks


def region(text: str, name: str, path: Path) -> str:
    match = re.search(
        rf"^[ \t]*# region {re.escape(name)}\n(.*?)^[ \t]*# endregion {re.escape(name)}\n",
        text,
        re.M | re.S,
    )
    assert match, f"{_id(path)} has no region {name!r}"
    return match.group(1)


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_code_blocks_show_the_files_as_they_are(readme: Path):
    shown = 0
    for attrs, body in code_blocks(readme):
        if "title" not in attrs:
            continue
        path = readme.parent / attrs["title"]
        assert path.is_file(), f"{_id(readme)} shows {attrs['title']}, which does not exist"
        expected = path.read_text()
        if "region" in attrs:
            expected = region(expected, attrs["region"], path)
        assert body == expected, (
            f"{_id(readme)}: the block titled {attrs['title']} differs from the file"
        )
        shown += 1
    if readme.parent != ROOT:
        assert shown, f"{_id(readme)} shows none of its step's files"


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_file_is_shown_in_its_lesson(step):
    titles = {attrs.get("title") for attrs, _ in code_blocks(step.path / "README.md")}
    for path in sorted(step.path.glob("*.py")):
        assert path.name in titles, f"{step.name}/README.md never shows {path.name}"


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_has_the_standard_files(step):
    for name in ("README.md", "tasks.py", "task_server.py", "submit.py"):
        assert (step.path / name).is_file(), f"{step.name} has no {name}"
    assert (step.path / "README.md").read_text().startswith("# ")


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_every_file_a_readme_names_exists(readme: Path):
    """File names in inline code and in command blocks must exist, so a renamed file cannot
    leave a stale name or command behind. A step's lesson names files of its own folder or
    paths from the repo root; the top README may also name the files every step has."""
    text = readme.read_text()
    commands = [
        body for attrs, body in code_blocks(readme) if attrs["lang"] in {"bash", "sh", "shell"}
    ]
    prose = FENCE.sub("", text)
    names = set()
    for snippet in re.findall(r"`([^`\n]+)`", prose) + commands:
        names.update(FILE_NAME.findall(snippet))
    places = [readme.parent, ROOT]
    if readme.parent == ROOT:
        places += [ROOT / "tests", *(step.path for step in STEPS)]
    missing = [n for n in sorted(names) if not any((place / n).exists() for place in places)]
    assert not missing, f"{_id(readme)} names files that do not exist: {missing}"


def test_the_top_readme_indexes_exactly_the_steps():
    linked = re.findall(r"\]\(tutorial/(\d\d_\w+)/?\)", (ROOT / "README.md").read_text())
    assert linked == [step.name for step in STEPS]
