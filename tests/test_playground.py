"""The playground at / in a real headless Chromium, against the service and the fake upstream."""

from __future__ import annotations

import json
import subprocess

import requests

from tests.conftest import ROOT, SERVICE_KEY
from tests.js_env import CHROMIUM, JS_DIR, node_modules, require

ARTIFACTS = ROOT / "artifacts"


def test_the_page_is_self_contained(service):
    response = requests.get(f"{service.url}/", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "<script" in page and "<style" in page
    for outside in ("http://", "https://", "//cdn", 'src="http'):
        assert outside not in page.replace("http://www.w3.org", ""), outside


def test_typing_a_prompt_with_two_images_shows_two_images(serve, fake, tmp_path):
    require(CHROMIUM, "Chromium (Debian package chromium)")
    node_modules("playwright-core")
    fake.state.image_latency = 0.3
    service = serve(api_key=SERVICE_KEY, heartbeat_seconds=0.1, video_poll_seconds=0.1, image_store_dir=str(tmp_path))
    ARTIFACTS.mkdir(exist_ok=True)
    result = subprocess.run(
        ["node", str(JS_DIR / "playground_check.mjs"), service.url, SERVICE_KEY, str(ARTIFACTS)],
        capture_output=True,
        text=True,
        timeout=180,
        env={"CHROMIUM": CHROMIUM, "PATH": _path()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for view in ("desktop", "phone"):
        assert "key" in out[f"{view}WrongKey"].lower()
        assert "Kwai-Kolors/Kolors" in out[f"{view}Models"]
        assert out[f"{view}KeyRemembered"]
        kept = f"{service.url}/images/"  # pictures are kept (as by default), and shown from the copy
        assert len(out[f"{view}Images"]) == 2 and all(url.startswith(kept) for url in out[f"{view}Images"])
        assert "生成中✅" in out[f"{view}Progress"]
        assert out[f"{view}Errors"] == []
        assert not out[f"{view}Overflow"], f"the page scrolls sideways on {view}"
        assert (ARTIFACTS / f"playground-{view}.png").stat().st_size > 10_000
    # A prompt imitating the image marker shows as text; the grid holds only the service's image.
    assert len(out["hostileImages"]) == 1 and out["hostileImages"][0].startswith(f"{service.url}/images/")
    # A video model's clip plays in the page: Chromium decoded the kept MP4 (320x180, the fake's clip).
    assert out["video"]["src"].startswith(f"{service.url}/images/") and out["video"]["src"].endswith(".mp4")
    assert (out["video"]["width"], out["video"]["height"]) == (320, 180)
    assert "完成：1/1 个视频生成成功" in out["videoProgress"]
    assert (ARTIFACTS / "playground-video.png").stat().st_size > 10_000
    # The ratio and count buttons reached the upstream: 16:9 on Kolors is its nearest size, 1024x1024.
    assert {c.body["image_size"] for c in fake.state.image_calls()} == {"1024x1024"}
    assert len(fake.state.image_calls()) == 5


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")
