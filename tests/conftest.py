"""Fixtures: the fake SiliconFlow and the service, each a real HTTP server on a free local port."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402
from siliconflow_proxy import create_app  # noqa: E402
from tests.fake_hosts import FakeLsky, FakeSink, InternalHost  # noqa: E402
from tests.fake_siliconflow import FakeSiliconFlow  # noqa: E402
from tests.helpers import one_at_a_time  # noqa: E402

PACKAGES = ("api", "drawing", "siliconflow", "storage", "core")


def source_files() -> list[Path]:
    """The service's own modules: the top-level ones and the packages' (not tests, benchmarks or tools)."""
    top = [path for path in ROOT.glob("*.py") if path.name != "gunicorn.conf.py"]
    return sorted(top + [path for package in PACKAGES for path in (ROOT / package).glob("*.py")])


GOOD_KEYS = ("sk-good-aaaa1111", "sk-good-bbbb2222", "sk-good-cccc3333")
SERVICE_KEY = "svc-secret-key-123456"


# The service's own threads, by name (core/background.py's loops, the drawing pool, the user-info
# checks). One still running after its test has ended was not stopped by Services.close().
SERVICE_THREADS = ("video-jobs", "model-catalog", "key-queue", "key-upkeep", "user-info", "upstream", "keeping")


@pytest.fixture(autouse=True)
def no_service_thread_outlives_its_test() -> Iterator[None]:
    before = set(threading.enumerate())
    yield  # autouse fixtures are set up first, so this runs after every other fixture's teardown
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith(SERVICE_THREADS)]
    for thread in left:
        thread.join(5)  # a drawing in flight ends at its own timeout; a loop sees `stopping` at once
    alive = sorted(t.name for t in left if t.is_alive())
    assert alive == [], f"threads left running after the test: {alive}"


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeSiliconFlow]:
    server = FakeSiliconFlow().start()
    yield server
    server.stop()


@pytest.fixture
def fake(_fake_server: FakeSiliconFlow) -> Iterator[FakeSiliconFlow]:
    """The fake upstream, its recorded calls and knobs reset for each test."""
    _fake_server.state.reset()
    yield _fake_server
    _fake_server.state.reset()


@pytest.fixture(scope="session")
def _lsky_server() -> Iterator[FakeLsky]:
    server = FakeLsky().start()
    yield server
    server.stop()


@pytest.fixture
def lsky(_lsky_server: FakeLsky) -> Iterator[FakeLsky]:
    _lsky_server.reset()
    yield _lsky_server
    _lsky_server.reset()


@pytest.fixture(scope="session")
def _sink_server() -> Iterator[FakeSink]:
    server = FakeSink().start()
    yield server
    server.stop()


@pytest.fixture
def sink(_sink_server: FakeSink) -> Iterator[FakeSink]:
    _sink_server.reset()
    yield _sink_server
    _sink_server.reset()


@pytest.fixture
def internal() -> Iterator[InternalHost]:
    """A server on this machine that image links must not reach; `internal.hits` lists what did."""
    server = InternalHost()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def _redis_server():
    from tests.servers import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_server(_redis_server):
    """A real redis-server (Debian's), emptied for each test."""
    if _redis_server.process.poll() is not None:
        _redis_server.start()
    _redis_server.flush()
    yield _redis_server
    if _redis_server.process.poll() is not None:  # a test stopped it: bring it back for the next
        _redis_server.start()


@pytest.fixture(scope="session")
def s3_server():
    """A real local S3 server (moto's standalone server) for the session; each test makes its own bucket."""
    from tests.servers import MotoS3

    server = MotoS3()
    yield server
    server.close()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, its credentials and endpoint in this process's environment (boto3 reads them
    there, for a service started in-process) and its state running; a test that paused it is undone."""
    for name, value in {**s3_server.ENV, "AWS_ENDPOINT_URL_S3": s3_server.url}.items():
        monkeypatch.setenv(name, value)
    yield s3_server
    s3_server.resume()


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, pattern: str) -> list[str]:
        return [r.getMessage() for r in self.records if re.search(pattern, r.getMessage())]


@pytest.fixture
def logged():
    """The service's log records (its logger does not propagate: it has its own handler)."""
    handler, logger = Logged(), logging.getLogger("siliconflow_proxy")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class Service:
    def __init__(self, app, url: str):
        self.app, self.url = app, url

    @property
    def services(self):
        return self.app.extensions["siliconflow"]


@pytest.fixture
def serve(fake: FakeSiliconFlow) -> Iterator[Callable[..., Service]]:
    """Start the service over real HTTP: `serve(api_keys=(...), ...)` overrides settings."""
    servers = []

    def start(environ: dict[str, str] | None = None, **overrides) -> Service:
        overrides.setdefault("api_base_url", fake.url)
        overrides.setdefault("api_keys", GOOD_KEYS)
        if "DATA_DIR" not in (environ or {}):  # the video record lives there: the test's own, not the checkout's
            overrides.setdefault("data_dir", tempfile.mkdtemp(prefix="service-data-"))
        if not {"IMAGE_STORE_DIR", "DATA_DIR", "S3_BUCKET"} & set(environ or {}):
            # Most tests look at the upstream's links: keeping (on by default) is asked for by name.
            overrides.setdefault("image_store_dir", None)
        app = create_app(Settings.from_env(environ or {}, **overrides))
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append((server, app))
        return Service(app, f"http://127.0.0.1:{server.server_port}")

    yield start
    for server, app in servers:
        server.shutdown()
        server.server_close()
        app.extensions["siliconflow"].close()  # no thread of it outlives the test


@pytest.fixture
def service(serve) -> Service:
    return serve()


@pytest.fixture(scope="session")
def production_bin() -> Path:
    """The bin/ of a venv made from requirements.txt alone: what the Dockerfile and every Procfile
    platform install. The dev requirements (pytest, openai, ...) can hide a missing package, so the
    service is started from here. `.ci/run` builds it and names it in PRODUCTION_VENV; otherwise it
    is built once here, and rebuilt when requirements.txt changes.
    """
    configured = os.environ.get("PRODUCTION_VENV")
    if configured:
        return Path(configured) / "bin"
    home = ROOT / ".cache" / "production-venv"
    stamp = home / "requirements.txt"
    wanted = (ROOT / "requirements.txt").read_text()
    with one_at_a_time("production-venv"):
        _build_production_venv(home, stamp, wanted)
    return home / "bin"


def _build_production_venv(home: Path, stamp: Path, wanted: str) -> None:
    if not stamp.exists() or stamp.read_text() != wanted:
        venv.create(home, with_pip=True, clear=True)
        subprocess.run(
            [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")],
            check=True,
            timeout=900,
        )
        stamp.write_text(wanted)


@pytest.fixture(scope="session")
def legacy_python() -> str:
    """A Python with openai==0.28.1, which cannot share an environment with openai>=1.

    `.ci/run` builds it and names it in LEGACY_OPENAI_PYTHON; otherwise it is built once here.
    """
    configured = os.environ.get("LEGACY_OPENAI_PYTHON")
    if configured:
        return configured
    home = ROOT / ".cache" / "legacy-openai"
    python = home / "bin" / "python"
    check = [str(python), "-c", "import openai; assert openai.version.VERSION == '0.28.1'"]
    with one_at_a_time("legacy-openai"):
        if not python.exists() or subprocess.run(check, capture_output=True).returncode != 0:
            venv.create(home, with_pip=True, clear=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "openai==0.28.1"], check=True, timeout=600)
    return str(python)
