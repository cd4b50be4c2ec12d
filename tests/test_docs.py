"""The README, docs/ and .env.example keep up with the code: every setting, its default, the CI
command, every file they name; and the README stays a landing page."""

from __future__ import annotations

import os
import re
from pathlib import Path

from config import env_table
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MOST_LINES = 400
GUNICORN_SETTINGS = {
    "WEB_CONCURRENCY": "2",
    "GUNICORN_WORKER_CLASS": "gevent",
    "GUNICORN_WORKER_CONNECTIONS": "1000",
    "GUNICORN_THREADS": "64",
}


def _readme_table() -> dict[str, str]:
    return dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+?) \|", README, re.M))


def test_readme_table_lists_every_setting_with_its_default():
    table = _readme_table()
    for name, default in [*env_table(), *GUNICORN_SETTINGS.items()]:
        assert name in table, f"{name} is missing from the README table"
        if default:
            assert table[name] == f"`{default}`", name
        else:
            assert table[name] == "(empty)", name


def test_env_example_lists_every_setting():
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    for name, default in [*env_table(), *GUNICORN_SETTINGS.items()]:
        assert name in example, f"{name} is missing from .env.example"
        assert example[name] == default, name


def test_ci_runs_exactly_the_readme_test_command():
    command = README.split("## Test it", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_gunicorn_defaults_match_the_docs():
    conf = (ROOT / "gunicorn.conf.py").read_text()
    for name, default in GUNICORN_SETTINGS.items():
        assert f'os.environ.get("{name}", "{default}")' in conf


# --- every file the README and docs/ name exists -------------------------------------------------

PLANNED: set[str] = set()  # modules a doc may name before they exist (none now)
FILE_SUFFIXES = {".py", ".md", ".conf", ".toml", ".txt", ".html", ".json", ".mjs", ".sh", ".yml", ".yaml", ".example"}
BARE_FILES = {"Procfile", "Dockerfile"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
NOT_A_PATH = set("<>${}*…:=[]|~@?&()")


def _ignored() -> set[str]:
    """Names .gitignore leaves out (data/, .venv, .cache, artifacts/...): made at run time, not ours."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return {line.strip().strip("/") for line in lines if line.strip() and not set(line) & set("*!#")} | {".git"}


IGNORED = _ignored()
TOP = {path.name for path in ROOT.iterdir()} - IGNORED


def _repository_files() -> dict[str, list[str]]:
    """Bare file name -> its paths from the root, for every file of the repository."""
    found: dict[str, list[str]] = {}
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        for name in files:
            found.setdefault(name, []).append(Path(top, name).relative_to(ROOT).as_posix())
    return found


FILES = _repository_files()


def _path_named(word: str) -> str | None:
    """The repository path a word of a code span names, or None when it names no file of ours:
    `docs/x.md`, `deploy/nginx.conf`, `tests/js`, `api/` (from the root: their first part is one
    of the repository's own), or a bare `pool.py`, `Procfile` (found anywhere in the repository)."""
    word = word.strip("\"',;").lstrip("(").rstrip(").")
    if not word or set(word) & NOT_A_PATH or word.startswith(("/", "-", ".venv")):
        return None
    if "/" in word:
        return word if word.split("/", 1)[0] in TOP else None
    if Path(word).suffix in FILE_SUFFIXES or word in BARE_FILES:
        return word
    return None


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path, text: str | None = None) -> set[str]:
    text = doc.read_text() if text is None else text
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M)}


def _exists(path: str) -> bool:
    if "/" in path:
        return (ROOT / path).exists() or path in PLANNED
    return path in FILES or any(planned.rsplit("/", 1)[1] == path for planned in PLANNED)


def missing_names(text: str, doc: Path) -> list[str]:
    """Every file `text` (a document at `doc`) names that the repository does not hold: names in
    code spans and in `sh` blocks, and links to files (and to their headings)."""
    words: list[str] = []
    for language, body in FENCE.findall(text):
        if language == "sh":
            words += body.split()
    prose = FENCE.sub("", text)
    for span in CODE_SPAN.findall(prose):
        words += span.split()
    missing = [word for word in words if (path := _path_named(word)) and not _exists(path)]
    for target in LINK.findall(CODE_SPAN.sub("", prose)):
        if "://" in target or target.startswith("mailto:"):
            continue
        where, _, anchor = target.partition("#")
        file = (doc.parent / where).resolve() if where else doc
        if not file.exists():
            missing.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file, text if file == doc else None):
            missing.append(target)
    return missing


def test_every_file_the_docs_name_exists():
    missing = {doc.relative_to(ROOT).as_posix(): names for doc in DOCS if (names := missing_names(doc.read_text(), doc))}
    assert missing == {}


def test_a_wrong_name_is_caught():
    readme = ROOT / "README.md"
    text = "# Top\nThe table is in `models.py`; see `docs/nothing.md`, `bench/bench.py`, [ops](docs/operations.md#nowhere)."
    assert missing_names(text, readme) == ["models.py", "docs/nothing.md", "docs/operations.md#nowhere"]
    assert missing_names("# Top\n[up](#top), [down](#bottom)", readme) == ["#bottom"]
    assert missing_names("`siliconflow/families.py`, `families.py`, `tests/js`, `data/images`, `.ci/run`", readme) == []


def test_the_readme_is_a_landing_page():
    lines = len(README.splitlines())
    assert lines <= README_MOST_LINES, f"README.md has {lines} lines: move the manual to docs/"


# --- what the docs show of an answer is what it writes -------------------------------------------

IMAGE_EXAMPLE = re.compile(r"^```markdown\n(!\[image1\|([^\]\n]*)\]\([^)\n]+\)\n[^\n]+)\n```", re.M)


def test_the_image_line_examples_are_what_an_answer_writes():
    """README's and docs/chat-uis.md's example of a kept picture: the image, then `[永久链接] ·
    [上游原图]` and the seed, exactly as drawing/chat_words.py writes them."""
    from drawing.chat_words import image_markdown

    for doc in (ROOT / "README.md", ROOT / "docs" / "chat-uis.md"):
        found = IMAGE_EXAMPLE.search(doc.read_text())
        assert found, f"{doc.name} has no example of a picture's lines"
        example, alt = found[1], found[2]
        written = image_markdown(
            1, alt, "https://your-host/images/HASH.png", "https://UPSTREAM", "https://your-host/images/HASH.png", seed=12345
        )
        expected = written.strip().replace("HASH", "<hash>").replace("https://UPSTREAM", "https://…")
        assert example == expected, doc.name
