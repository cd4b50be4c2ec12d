"""The chat UIs' own background-task prompts, taken from their published packages, and rendered
as each UI renders them: what their housekeeping requests look like on the wire.

The packages are downloaded once into .cache/ui-packages (PyPI and npm, as CI may reach them):
Open WebUI's wheel (its templates are plain constants in open_webui/config.py, read with ast,
never imported), LibreChat's @librechat/agents and LobeChat's @lobehub/chat npm tarballs (the
prompts are template literals in their TypeScript sources).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from functools import cache
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers import one_at_a_time
from tests.js_env import require

CACHE = ROOT / ".cache" / "ui-packages"
OPEN_WEBUI = "open-webui==0.12.4"
LIBRECHAT = "@librechat/agents@3.9.2"
LOBECHAT = "@lobehub/chat@1.143.3"


def _download_wheel(requirement: str) -> Path:
    name = requirement.split("==")[0].replace("-", "_")
    with one_at_a_time("ui-packages"):
        return _wheel(requirement, name)


def _wheel(requirement: str, name: str) -> Path:
    found = sorted(CACHE.glob(f"{name}-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", requirement, "-d", str(CACHE)],
            check=True,
            timeout=900,
        )
        found = sorted(CACHE.glob(f"{name}-*.whl"))
    return found[-1]


def _npm_source(package: str, member: str) -> str:
    tarball = CACHE / (package.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz")
    with one_at_a_time("ui-packages"):
        _pack(package, tarball)
    with tarfile.open(tarball) as archive:
        return archive.extractfile(member).read().decode()  # type: ignore[union-attr]


def _pack(package: str, tarball: Path) -> None:
    if not tarball.exists():
        require(shutil.which("npm"), "Node.js and npm")
        CACHE.mkdir(parents=True, exist_ok=True)
        out = (
            subprocess.run(
                ["npm", "pack", package, "--silent", "--pack-destination", str(CACHE)],
                check=True,
                capture_output=True,
                text=True,
                timeout=900,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        (CACHE / out).rename(tarball)


@cache
def open_webui_templates() -> dict[str, str]:
    """DEFAULT_*_PROMPT_TEMPLATE constants of open_webui/config.py, by name."""
    with zipfile.ZipFile(_download_wheel(OPEN_WEBUI)) as wheel:
        source = wheel.read("open_webui/config.py").decode()
    templates = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.endswith("_PROMPT_TEMPLATE")
            and isinstance(node.value, ast.Constant)
        ):
            templates[node.targets[0].id] = node.value.value
    return templates


@cache
def open_webui_image_contexts() -> list[str]:
    """The system messages Open WebUI's own image generation and editing (open_webui/utils/
    middleware.py) put first after drawing: done, edited, failed (`{error_message}` left in)."""
    with zipfile.ZipFile(_download_wheel(OPEN_WEBUI)) as wheel:
        source = wheel.read("open_webui/utils/middleware.py").decode()
    return list(dict.fromkeys(re.findall(r"system_message_content = f?'(<context>.*?</context>)'", source)))


@cache
def librechat_title_prompt() -> str:
    source = _npm_source(LIBRECHAT, "package/src/utils/title.ts")
    return re.search(r"const defaultCompletionPrompt = `(.*?)`;", source, re.S).group(1)


@cache
def lobechat_title_system(locale: str = "zh-CN") -> str:
    source = _npm_source(LOBECHAT, "package/packages/prompts/src/chains/summaryTitle.ts")
    return (
        re.search(r"content: `(You are a professional conversation summarizer.*?)`", source, re.S)
        .group(1)
        .replace("${locale}", locale)
    )


# --- rendering, as each UI does it -------------------------------------------------------------------

_IMAGE_OR_DETAILS = re.compile(r"<details\b[^<>]*>(?:(?!<details\b).)*?</details>|!\[[^\[\]]*\]\([^()]*\)", re.S)


def render_open_webui(template: str, messages: list[dict]) -> str:
    """Open WebUI 0.12 (utils/task.py, middleware.background_tasks_handler): markdown images and
    <details> blocks are removed from the history, which becomes `ROLE: text` lines."""
    cleaned = [{"role": m["role"], "content": _IMAGE_OR_DETAILS.sub("", m["content"]).strip()} for m in messages]

    def lines(selected: list[dict]) -> str:
        return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in selected)

    def messages_variable(match: re.Match) -> str:
        where, count = match.group(1), match.group(2)
        if where == "END":
            return lines(cleaned[-int(count) :])
        if where == "START":
            return lines(cleaned[: int(count)])
        return lines(cleaned)

    text = re.sub(r"\{\{MESSAGES(?::(START|END|MIDDLETRUNCATE):(\d+))?(?:\|[^}]*)?\}\}", messages_variable, template)
    last_user = next((m["content"] for m in reversed(cleaned) if m["role"] == "user"), "")
    text = re.sub(r"\{\{prompt(?::[^}]*)?\}\}", last_user, text, flags=re.I)
    for name, value in (
        ("CURRENT_DATE", "2026-11-27"),
        ("CURRENT_TIME", "12:00:00"),
        ("CURRENT_DATETIME", "2026-11-27 12:00:00"),
        ("CURRENT_WEEKDAY", "Friday"),
        ("USER_NAME", "User"),
        ("USER_LANGUAGE", "zh-CN"),
        ("USER_LOCATION", "Unknown"),
        ("TYPE", "General"),
        ("PROMPT", last_user),
    ):
        text = text.replace("{{" + name + "}}", value)
    return text


def render_librechat(prompt: str, user: str, assistant: str) -> str:
    """LibreChat: `User: {input}\\nAI: {output}` (the answer's text parts only) as {convo}."""
    return prompt.replace("{convo}", f"User: {user}\nAI: {assistant}")


def render_lobechat(messages: list[dict]) -> str:
    """LobeChat: `role: content` lines; the answer being written is still its placeholder "..."."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def parse_like_open_webui(answer: str) -> dict:
    """What Open WebUI reads from an answer: the JSON object from the first '{' to the last '}'."""
    import json

    return json.loads(answer[answer.find("{") : answer.rfind("}") + 1])
