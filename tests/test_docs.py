"""The README and .env.example keep up with the code: every setting, its default, the CI command."""

from __future__ import annotations

import re

from config import env_table
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
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
