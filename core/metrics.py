"""Prometheus metrics (`/metrics`, with ADMIN_KEY), correct under gunicorn's several workers.

prometheus_client's multiprocess mode: each process writes its counters to memory-mapped files in
one directory (`PROMETHEUS_MULTIPROC_DIR`, made fresh for each start under the system's temp
directory), and a scrape sums them. Nothing here is set up without ADMIN_KEY, and every function is
then a no-op. No key material in any label: models, routes, outcomes and failure kinds only.
The page's "pictures per hour" is kept in the user-key store (shared by every instance), not here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from typing import Any

_M: dict[str, Any] = {}  # the metric objects, once set up


def setup() -> None:
    """In the master, before the workers fork: the directory and the metric objects."""
    if _M:
        return
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="siliconflow-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        master = os.getpid()
        atexit.register(lambda: os.getpid() == master and shutil.rmtree(directory, ignore_errors=True))
    else:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
    from prometheus_client import Counter, Histogram

    _M["images"] = Counter("siliconflow_images_total", "Pictures asked for, by model and outcome", ["model", "outcome"])
    _M["videos"] = Counter("siliconflow_videos_total", "Videos asked for from chat, by model and outcome", ["model", "outcome"])
    _M["failures"] = Counter("siliconflow_image_failures_total", "Pictures not delivered, by kind of failure", ["kind"])
    _M["spend"] = Counter(
        "siliconflow_spend_yuan", "Estimated yuan spent on SiliconFlow, by model (the price table's)", ["model"]
    )
    _M["requests"] = Counter("siliconflow_requests_total", "HTTP requests, by route and status", ["route", "status"])
    _M["upstream"] = Histogram(
        "siliconflow_upstream_seconds",
        "SiliconFlow image calls, seconds",
        buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
    )
    _M["wait"] = Histogram(
        "siliconflow_key_wait_seconds",
        "How long a picture waited for a key with budget, seconds",
        buckets=(0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
    )


def worker_gone(pid: int) -> None:
    """gunicorn's child_exit: a dead worker's live gauges go (its counters stay counted)."""
    if _M:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def request(route: str, status: int) -> None:
    if _M:
        _M["requests"].labels(route, str(status)).inc()


def upstream_call(seconds: float) -> None:
    if _M:
        _M["upstream"].observe(seconds)


def key_wait(seconds: float) -> None:
    if _M:
        _M["wait"].observe(seconds)


def spent(model: str, yuan: float) -> None:
    """A picture or video SiliconFlow drew, at its price (0 when free or unpriced)."""
    if _M:
        _M["spend"].labels(model).inc(yuan)


def outcome(what: str, model: str, ok: bool, failure: str | None = None) -> None:
    """One picture ("images") or video ("videos") asked for ended: delivered, or failed and why."""
    if _M:
        _M[what].labels(model, "ok" if ok else "failed").inc()
        if not ok and failure:
            _M["failures"].labels(failure).inc()


def hour(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(now if now is not None else time.time()))


def per_hour(users: Any) -> list[dict[str, Any]]:
    """The last 24 hours, oldest first: {"hour": "2026-12-03T07" (UTC), "pictures": n}."""
    now = time.time()
    hours = [hour(now - 3600 * back) for back in range(23, -1, -1)]
    counts = users.hours(hours) if users is not None else {}
    return [{"hour": hour, "pictures": counts.get(hour, 0)} for hour in hours]


def _registry():
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def failures() -> dict[str, float]:
    if not _M:
        return {}
    found: dict[str, float] = {}
    for family in _registry().collect():
        if family.name == "siliconflow_image_failures":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["kind"]] = found.get(sample.labels["kind"], 0) + sample.value
    return found


def exposition(services: Any) -> bytes:
    """The text format: every process's counters summed, and the keys by state now (a gauge read
    from the shared key state at scrape time, so every worker answers the same)."""
    from prometheus_client import generate_latest

    text = generate_latest(_registry()) if _M else b""
    states: dict[str, int] = {}
    for key in services.pool.key_states():
        states[key["state"]] = states.get(key["state"], 0) + 1
    lines = ["# HELP siliconflow_keys Upstream keys by state", "# TYPE siliconflow_keys gauge"]
    lines += [
        f'siliconflow_keys{{state="{state}"}} {states.get(state, 0)}'
        for state in ("ok", "cooling", "resting", "dead", "disabled")
    ]
    return text + ("\n".join(lines) + "\n").encode()
