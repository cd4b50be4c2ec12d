"""Real processes around the service for the tests: gunicorn as the Procfile runs it, and nginx.

Each listens on 127.0.0.1 on a free port and is stopped by the test that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from tests.conftest import ROOT
from tests.js_env import require


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_command() -> str:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    return line.removeprefix("web:").strip()


class Gunicorn:
    """The Procfile's web command, run from `bin_dir` (the production venv's)."""

    def __init__(self, env_extra: dict[str, str], bin_dir: Path, cwd: Path | None = None, *, checkout_on_path: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Not PROMETHEUS_MULTIPROC_DIR: it names the test process's own metrics directory, which a
        # gunicorn with ADMIN_KEY would empty at its start (and this process's counters with it).
        prefixes = ("API_", "MAX_IMAGES", "VIRTUAL_ENV", "PYTHON", "GUNICORN_", "PROMETHEUS_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env.update(PORT=str(self.port), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
        if cwd is None:
            # Pictures are kept by default, under DATA_DIR: each instance its own, not the checkout's data/.
            env["DATA_DIR"] = tempfile.mkdtemp(prefix="service-data-")
        elif checkout_on_path:
            env["PYTHONPATH"] = str(ROOT)  # the Procfile's command, run from another working directory
        env.update(env_extra)
        # Output goes to a file: a pipe nobody reads fills up and blocks the server's logging. It is
        # read through a handle of its own: one shared with the child would move its write offset.
        fd, self._log_path = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
        self._final_log: str | None = None
        with os.fdopen(fd, "w") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {web_command()}"],
                cwd=cwd or ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def wait_until_up(self, seconds: float = 30) -> bool:
        return wait_until_up(self.url, seconds)

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def worker_pid(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise AssertionError("no gunicorn worker")

    def stop(self) -> str:
        """Stop it (SIGTERM to the group) and return everything it logged."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._final_log is None:
            self._final_log = self.log()
            os.unlink(self._log_path)
        return self._final_log

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        with open(self._log_path, errors="replace") as log:
            return log.read()


def wait_until_up(url: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


def _listening(port: int, process: subprocess.Popen, seconds: float = 10) -> bool:
    """True once something accepts connections on `port`; False if `process` ends or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class Nginx:
    """Debian's nginx with the shipped deploy/nginx.conf, pointed at `upstream_port`.

    `read_timeout` replaces the config's proxy_read_timeout, to show what heartbeats are for.
    """

    def __init__(self, upstream_port: int, *, read_timeout: str | None = None, worker_connections: int = 4096):
        require(NGINX, "nginx (Debian package nginx)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = Path(tempfile.mkdtemp(prefix="nginx-test-"))
        server = (ROOT / "deploy" / "nginx.conf").read_text()
        server = server.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        server = server.replace("server 127.0.0.1:7860;", f"server 127.0.0.1:{upstream_port};")
        if read_timeout:
            server = server.replace("proxy_read_timeout 120s;", f"proxy_read_timeout {read_timeout};")
        (self.home / "site.conf").write_text(server)
        temp = "".join(f"{name}_temp_path {self.home}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.home / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {self.home}/nginx.pid;\n"
            f"error_log {self.home}/error.log warn;\nworker_rlimit_nofile 16384;\n"
            f"events {{ worker_connections {worker_connections}; }}\n"
            f"http {{\naccess_log off;\n{temp}include {self.home}/site.conf;\n}}\n"
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.home), "-c", str(self.home / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not _listening(self.port, self.process):
            raise AssertionError("nginx did not start: " + self.errors())

    def errors(self) -> str:
        path = self.home / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)


REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class RedisServer:
    """Debian's redis-server on a free port, nothing saved to disk. `stop()` and `start()` again
    (same port) stand for Redis going away and coming back."""

    def __init__(self) -> None:
        require(REDIS_SERVER, "Redis (Debian package redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.home = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.home),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not _listening(self.port, self.process):
            raise AssertionError("redis-server did not start")

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class MotoS3:
    """A real S3 server on a free port: moto's standalone server (PyPI `moto[server]`), objects in
    its memory. `pause()`/`resume()` freeze and thaw it (a bucket that stops answering, its objects
    kept); with `auth`, it checks credentials as S3 does, and knows none (every key is refused)."""

    ENV = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret-0123", "AWS_REGION": "us-east-1"}

    def __init__(self, *, auth: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not _listening(self.port, self.process, seconds=30):
            raise AssertionError("moto's S3 server did not start")

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """What the service needs to keep pictures in `bucket` here."""
        return {**self.ENV, "AWS_ENDPOINT_URL_S3": self.url, "S3_BUCKET": bucket, **extra}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, *, public: bool = False) -> str:
        """A new bucket; `public`: anyone may read its objects (a bucket policy, as operators set one)."""
        name = f"pictures-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if public:
            statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{name}/*"}
            client.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        return name

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.resume()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
