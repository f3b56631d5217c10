"""Prose never drifts from code, and every lesson keeps its short shape.

A fenced block whose info string names a file, for example

    ```python title="tasks.py"

must be that file's text (paths are relative to the page). With `region="name"` it must
be the lines between `# region name` and `# endregion name` in that file.

A step's README.md is its main path: a fixed set of sections and a length a learner reads
in a few minutes. Everything else lives in the NOTES.md beside it or in SURPRISES.md, and
every link between those pages must land on a heading that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tutorial.runner import ROOT, find_steps

STEPS = find_steps()
READMES = [ROOT / "README.md", *(step.path / "README.md" for step in STEPS)]
# Every page a reader can reach: the lessons, their notes and the tutorial's shared pages.
PAGES = [
    *READMES,
    *sorted((ROOT / "tutorial").glob("*/NOTES.md")),
    *sorted((ROOT / "tutorial").glob("*.md")),
]
SECTIONS = [
    "The files",
    "Run it",
    "What you see",
    "What happened",
    "Coming from Celery or arq",
    "Go deeper",
]
MAX_LINES, MAX_WORDS = 150, 1200
# The core path (steps 01 to 08) is read in one sitting; the deep end, a step at a time.
CORE_PATH, MAX_WORDS_IN_CORE, MAX_WORDS_PER_STEP = 8, 7500, 1000
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
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


@pytest.mark.parametrize("readme", PAGES, ids=_id)
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
    if readme.name == "README.md" and readme.parent != ROOT:
        assert shown, f"{_id(readme)} shows none of its step's files"


def _pages_of(step) -> list[Path]:
    return [p for p in (step.path / "README.md", step.path / "NOTES.md") if p.exists()]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_file_is_shown_whole_in_its_lesson_or_notes(step):
    """The main path may show a long file by regions; then its notes show it whole."""
    whole = {
        attrs["title"]
        for page in _pages_of(step)
        for attrs, _ in code_blocks(page)
        if "title" in attrs and "region" not in attrs
    }
    files = [
        *step.path.glob("*.py"),
        *step.path.glob("compose.yaml"),
        *step.path.glob("Dockerfile"),
    ]
    for path in sorted(files):
        assert path.name in whole, f"neither {step.name}/README.md nor NOTES.md shows {path.name}"


def _headings(text: str, level: str) -> list[str]:
    return re.findall(rf"^{level} (.+?)\s*$", FENCE.sub("", text), re.M)


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_lesson_has_the_same_sections(step):
    text = (step.path / "README.md").read_text()
    assert _headings(text, "##") == SECTIONS, f"{step.name}/README.md: sections out of shape"


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_lesson_is_short(step):
    text = (step.path / "README.md").read_text()
    lines, words = len(text.splitlines()), len(text.split())
    assert lines <= MAX_LINES, f"{step.name}/README.md has {lines} lines (at most {MAX_LINES})"
    assert words <= MAX_WORDS, f"{step.name}/README.md has {words} words (at most {MAX_WORDS})"


def _words(steps) -> int:
    return sum(len((step.path / "README.md").read_text().split()) for step in steps)


def test_the_core_path_is_under_an_hour_of_reading():
    words = _words(STEPS[:CORE_PATH])
    assert words <= MAX_WORDS_IN_CORE, f"steps 01 to 08 have {words} words (at most 7500)"


def test_the_lessons_average_at_most_1000_words():
    words, most = _words(STEPS), MAX_WORDS_PER_STEP * len(STEPS)
    assert words <= most, f"the {len(STEPS)} lessons have {words} words (at most {most})"


def test_the_first_submitter_is_only_the_first_lesson():
    lines = (STEPS[0].path / "submit.py").read_text().splitlines()
    assert len(lines) <= 20, f"{STEPS[0].name}/submit.py has {len(lines)} lines (at most 20)"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation gone, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    found = set(re.findall(r'<a id="([^"]+)"', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", text), re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_link_lands_on_a_page_and_heading_that_exist(page: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if linked.is_dir():
            linked = linked / "README.md"  # GitHub shows a folder's README.md
        if not linked.exists():
            broken.append(target)
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{_id(page)} links to pages or headings that do not exist: {broken}"


def test_every_test_the_surprises_page_cites_exists():
    """Each surprise names the test that pins it, so the test fails the day Prefect changes."""
    page = ROOT / "tutorial" / "SURPRISES.md"
    if not page.exists():
        pytest.skip("no SURPRISES.md yet")
    cited = re.findall(r"(tests/test_\w+\.py)::(test_\w+)", page.read_text())
    assert cited, "SURPRISES.md cites no test"
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (ROOT / path).exists()
        or not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert not missing, f"SURPRISES.md cites tests that do not exist: {missing}"


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_has_the_standard_files(step):
    for name in ("README.md", "tasks.py", "task_server.py", "submit.py"):
        assert (step.path / name).is_file(), f"{step.name} has no {name}"
    assert (step.path / "README.md").read_text().startswith("# ")


@pytest.mark.parametrize("readme", PAGES, ids=_id)
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
