"""Prometheus metrics: nothing is set up without ADMIN_KEY; with it, every worker's counts are summed
at a scrape, pictures are counted by outcome and failures by kind, keys by state, and no label or
line carries key material; the page's pictures per hour come from the user-key store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from core import metrics
from storage.user_keys import SqliteKeys
from tests.conftest import ROOT, SERVICE_KEY
from tests.helpers import answer_text, child_exited

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def _scrape(service) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of /metrics, as Prometheus reads it."""
    # Imported here: prometheus_client picks its multiprocess values when first imported, after setup().
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(f"{service.url}/metrics", headers=AS_ADMIN, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_without_an_admin_key_nothing_is_set_up_and_every_call_does_nothing(fake):
    """In a process of its own (this one may have set metrics up for another test): a service
    without ADMIN_KEY draws, and no metrics directory or library is touched."""
    script = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
from config import Settings
from core import metrics
from siliconflow_proxy import create_app
app = create_app(Settings.from_env({{}}, api_base_url={fake.url!r}, api_keys=("sk-good-aaaa1111",), image_store_dir=None))
metrics.outcome("images", "m", False, "timeout"); metrics.request("/health", 200); metrics.spent("m", 0.1)
metrics.upstream_call(1.0); metrics.key_wait(1.0); metrics.worker_gone(os.getpid())
print(json.dumps({{"failures": metrics.failures(), "dir": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
    "library": "prometheus_client" in sys.modules,
    "text": metrics.exposition(app.extensions["siliconflow"]).decode()}}))
app.extensions["siliconflow"].close()
"""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    said = json.loads(result.stdout.strip().splitlines()[-1])
    assert said["failures"] == {} and said["dir"] is None and not said["library"]
    assert said["text"].splitlines()[2:] == [
        'siliconflow_keys{state="ok"} 1',
        'siliconflow_keys{state="cooling"} 0',
        'siliconflow_keys{state="resting"} 0',
        'siliconflow_keys{state="dead"} 0',
        'siliconflow_keys{state="disabled"} 0',
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn's workers are forked")
def test_every_workers_counts_are_summed_at_a_scrape():
    metrics.setup()  # as create_app does with ADMIN_KEY, before gunicorn forks
    before = metrics.failures().get("network", 0)
    child = os.fork()
    if child == 0:  # a worker
        try:
            metrics.outcome("images", "worker-test/model", False, "network")
            metrics.outcome("images", "worker-test/model", False, "network")
        finally:
            os._exit(0)
    assert child_exited(child) == 0
    metrics.outcome("images", "worker-test/model", False, "network")
    metrics.outcome("images", "worker-test/model", True, "network")  # delivered: no failure counted
    assert metrics.failures()["network"] == before + 3


def test_a_scrape_counts_pictures_failures_and_requests_and_keys_by_state_without_key_material(serve, fake):
    service = serve(
        admin_key=ADMIN, api_key=SERVICE_KEY, api_keys=("sk-dead-metrics01", "sk-good-metrics02"), prompt_expansion=False
    )
    before = _scrape(service)
    assert requests.get(f"{service.url}/health", timeout=10).status_code == 200
    answer_text(service.url, "画一只猫", stream=False, key=SERVICE_KEY)
    after = _scrape(service)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("siliconflow_images_total", model="Kwai-Kolors/Kolors", outcome="ok") == 1
    assert grew("siliconflow_requests_total", route="/health", status="200") == 1
    assert after[("siliconflow_keys", (("state", "dead"),))] == 1 and after[("siliconflow_keys", (("state", "ok"),))] == 1
    text = requests.get(f"{service.url}/metrics", headers=AS_ADMIN, timeout=10).text
    assert "metrics01" not in text and "metrics02" not in text and ADMIN not in text


def test_a_picture_not_delivered_is_counted_by_the_kind_of_its_failure(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, api_keys=("sk-dead-metrics03",), prompt_expansion=False)
    before = _scrape(service)
    answer = answer_text(service.url, "画一只猫", stream=False, key=SERVICE_KEY)
    assert "完成：0/1" in answer
    after = _scrape(service)
    grown = {
        dict(labels)["kind"]: value - before.get((name, labels), 0)
        for (name, labels), value in after.items()
        if name == "siliconflow_image_failures_total" and value != before.get((name, labels), 0)
    }
    assert grown == {"auth": 1}, grown  # a revoked key: whose problem it is
    failed = ("siliconflow_images_total", (("model", "Kwai-Kolors/Kolors"), ("outcome", "failed")))
    assert after[failed] - before.get(failed, 0) == 1


def test_pictures_per_hour_are_the_last_24_hours_oldest_first(tmp_path):
    users, now = SqliteKeys(str(tmp_path / "users.sqlite3")), time.time()
    users.count_hour(metrics.hour(now - 25 * 3600), 5)  # more than a day ago: not shown
    users.count_hour(metrics.hour(now - 2 * 3600), 3)
    users.count_hour(metrics.hour(now), 1)
    rows = metrics.per_hour(users)
    hours = [row["hour"] for row in rows]
    assert len(rows) == 24 and hours == sorted(hours) and len(set(hours)) == 24
    shown = {row["hour"]: row["pictures"] for row in rows}
    assert shown[metrics.hour(now - 2 * 3600)] == 3 and shown[metrics.hour(now)] == 1 and sum(shown.values()) == 4
    assert [row["pictures"] for row in metrics.per_hour(None)] == [0] * 24


def test_hours_are_named_in_utc():
    assert metrics.hour(0) == "1970-01-01T00"
    assert metrics.hour(1_767_225_599) == "2025-12-31T23" and metrics.hour(1_767_225_600) == "2026-01-01T00"
