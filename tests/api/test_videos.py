"""Video through OpenAI's Videos API: jobs submitted once through the key pool, polled and kept in
the background (also by the next process after a restart), answered by any worker; against the
fake's video contract (queue, progress, a real small MP4, failures, links that expire)."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from storage.video_records import VideoJob, new_id
from tests.conftest import SERVICE_KEY
from tests.fake_siliconflow import CLIP
from tests.helpers import images_in, post_chat, stream_chunks, wait_until
from tests.servers import Gunicorn

T2V, I2V = "Wan-AI/Wan2.2-T2V-A14B", "Wan-AI/Wan2.2-I2V-A14B"
FRAME = (Path(__file__).parent.parent / "data" / "frame.png").read_bytes()  # a real PNG (ffmpeg's test source)


@pytest.fixture
def video_service(serve, tmp_path):
    return serve(video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"))


def _client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=30)


def test_the_openai_client_creates_polls_and_downloads_a_video(video_service, fake, tmp_path):
    client = _client(video_service)
    video = client.videos.create_and_poll(model=T2V, prompt="a cat running on the beach", size="1280x720", seconds="8")
    assert video.status == "completed" and video.progress == 100 and video.seconds == "5", video
    assert video.model == T2V and video.size == "1280x720" and video.completed_at >= video.created_at
    content = client.videos.download_content(video.id)
    assert content.read() == CLIP  # the real MP4, kept here: SiliconFlow's link may be gone by now
    assert list((tmp_path / "kept").glob("*.mp4"))
    [job] = fake.state.videos.values()
    assert job["body"] == {"model": T2V, "prompt": "a cat running on the beach", "image_size": "1280x720"}
    # Paced: polled by the background worker every VIDEO_POLL_SECONDS, not once per client request.
    assert job["polls"] <= (0.2 + 0.6) / 0.1 + 3
    listed = client.videos.list(limit=5)
    assert [v.id for v in listed.data] == [video.id]
    assert client.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_the_video_object_says_what_the_job_is_doing(video_service, fake):
    fake.state.video_queue_seconds, fake.state.video_seconds = 0.5, 1.0
    created = requests.post(f"{video_service.url}/v1/videos", json={"prompt": "a cat", "model": T2V}, timeout=30)
    assert created.status_code == 200 and created.headers["openai-poll-after-ms"]
    video = created.json()
    assert video["status"] == "queued" and video["object"] == "video" and video["id"].startswith("video_")
    seen = set()

    def finished() -> bool:
        seen.add(requests.get(f"{video_service.url}/v1/videos/{video['id']}", timeout=10).json()["status"])
        return "completed" in seen

    assert wait_until(finished, 10, interval=0.05)
    assert {"queued", "in_progress", "completed"} <= seen
    thumbnail = requests.get(f"{video_service.url}/v1/videos/{video['id']}/content?variant=thumbnail", timeout=10)
    assert thumbnail.status_code == 404 and "only variant=video" in thumbnail.json()["error"]["message"]


def _kept_link(service, video_id: str) -> str:
    """Where a chat answer's "get it later" link leads: the kept clip, served without a key."""
    later = requests.get(f"{service.url}/videos/{video_id}", allow_redirects=False, timeout=10)
    assert later.status_code == 302 and "/images/" in later.headers["Location"], later.text
    return later.headers["Location"]


@pytest.mark.parametrize("keeper", ["local", "s3"])
def test_deleting_a_video_removes_its_kept_clip_and_leaves_anothers_with_the_same_bytes(serve, fake, tmp_path, request, keeper):
    if keeper == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.bucket()
        service = serve({"S3_BUCKET": bucket, "S3_PREFIX": "clips", "UPLOAD_TIMEOUT": "1"}, video_poll_seconds=0.1)
    else:
        service = serve(video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"))
    client = _client(service)
    first, second = (client.videos.create_and_poll(model=T2V, prompt=f"a cat {n}") for n in (1, 2))
    links = {video.id: _kept_link(service, video.id) for video in (first, second)}
    assert all(requests.get(link, timeout=10).content == CLIP for link in links.values())  # the fake's bytes, both

    if keeper == "s3":  # a bucket away: the video is not deleted (its clip would stay, unreachable to remove)
        s3.pause()
        try:
            refused = requests.delete(f"{service.url}/v1/videos/{first.id}", timeout=30)
        finally:
            s3.resume()
        assert refused.status_code == 503 and "Try again" in refused.json()["error"]["message"]
        assert client.videos.retrieve(first.id).status == "completed"

    assert client.videos.delete(first.id).deleted
    for path in (f"/v1/videos/{first.id}", f"/v1/videos/{first.id}/content", f"/videos/{first.id}"):
        assert requests.get(f"{service.url}{path}", allow_redirects=False, timeout=10).status_code == 404, path
    assert requests.get(links[first.id], timeout=10).status_code == 404  # no longer served to anyone holding the link
    assert requests.get(links[second.id], timeout=10).content == CLIP  # the other job's clip plays on
    assert client.videos.download_content(second.id).read() == CLIP
    assert [v.id for v in client.videos.list().data] == [second.id]

    assert client.videos.delete(second.id).deleted
    assert requests.get(links[second.id], timeout=10).status_code == 404
    if keeper == "s3":
        assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    else:
        assert not list((tmp_path / "kept").iterdir())


def test_a_video_deleted_while_its_clip_is_downloaded_is_not_brought_back(serve, fake, tmp_path):
    """The poller holds the job for the seconds a large download takes: a delete meanwhile stands,
    and what it kept meanwhile goes too."""
    fake.state.gate = threading.Event()
    service = serve(video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"))
    video = _client(service).videos.create(model=T2V, prompt="a cat")
    assert fake.state.arrived.wait(10)  # its clip is being fetched
    assert requests.delete(f"{service.url}/v1/videos/{video.id}", timeout=10).json()["deleted"]
    fake.state.gate.set()
    jobs = service.services.videos.jobs
    assert wait_until(lambda: jobs.claim(video.id, 0.001), 10)  # the poller has let it go: its look is over
    assert requests.get(f"{service.url}/v1/videos/{video.id}", timeout=10).status_code == 404
    assert requests.get(f"{service.url}/videos/{video.id}", timeout=10).status_code == 404
    assert not list((tmp_path / "kept").glob("*.mp4"))


def test_a_picture_becomes_the_first_frame(video_service, fake):
    client = _client(video_service)
    video = client.videos.create_and_poll(
        model=I2V, prompt="the cat starts to dance", input_reference=("frame.png", FRAME, "image/png")
    )
    assert video.status == "completed", video
    [job] = fake.state.videos.values()
    assert job["body"]["model"] == I2V and job["body"]["image"].startswith("data:image/png;base64,")


def test_sora_2_makes_its_video_with_the_wan_model_that_fits(video_service, fake):
    client = _client(video_service)
    from_words = client.videos.create(model="sora-2", prompt="a cat on the beach")
    from_frame = client.videos.create(model="sora-2", prompt="the cat dances", input_reference=("frame.png", FRAME, "image/png"))
    assert (from_words.model, from_frame.model) == (T2V, I2V)  # the answer names the real model
    assert sorted(job["body"]["model"] for job in fake.state.videos.values()) == sorted([T2V, I2V])


def test_a_refused_video_is_failed_with_siliconflows_reason(video_service, fake):
    fake.state.video_fail = "content moderation: the prompt was refused"
    video = _client(video_service).videos.create_and_poll(model=T2V, prompt="a cat")
    assert video.status == "failed" and "content moderation" in video.error.message


def test_a_clip_link_that_carries_the_upstream_key_is_refused_and_never_kept(serve, fake, tmp_path, logged):
    """As for pictures: a link with the key in it is never fetched, stored, redirected to or logged."""
    key = "sk-keyinurl-video01"
    data = tmp_path / "data"
    service = serve(api_keys=(key,), video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"), data_dir=str(data))
    video = _client(service).videos.create_and_poll(model=T2V, prompt="a cat")
    assert video.status == "failed" and video.error.code == "video_key_in_link", video
    assert "carried an API key" in video.error.message
    for path in (f"/v1/videos/{video.id}", f"/v1/videos/{video.id}/content", f"/videos/{video.id}", "/v1/videos"):
        answer = requests.get(f"{service.url}{path}", allow_redirects=False, timeout=10)
        assert answer.status_code != 302 and key not in answer.text, path
    assert fake.state.downloads == []  # never fetched
    assert not list((tmp_path / "kept").glob("*.mp4"))
    for record in (path for path in data.rglob("*") if path.is_file()):  # the jobs' file, its WAL, the spools…
        assert key.encode() not in record.read_bytes(), record
    assert not [r for r in logged.records if key in r.getMessage()]


def test_dead_keys_fail_over_at_submit_and_the_job_is_polled_by_its_own_account(serve, fake, tmp_path):
    service = serve(api_keys=("sk-dead-video001", "sk-good-acctA-v1", "sk-good-acctB-v2"), video_poll_seconds=0.1)
    video = _client(service).videos.create_and_poll(model=T2V, prompt="a cat")
    assert video.status == "completed"
    submits = [c.key for c in fake.state.calls if c.path == "/v1/video/submit"]
    polls = {c.key for c in fake.state.calls if c.path == "/v1/video/status"}
    assert len(submits) == len(set(submits)) and submits[-1] != "sk-dead-video001"  # never submitted twice
    assert polls == {submits[-1]}  # the account that submitted it asks after it


@pytest.mark.parametrize(
    "body, says",
    [
        ({"model": T2V}, "'prompt' is required"),
        ({"prompt": "a cat", "model": "Kwai-Kolors/Kolors"}, "draws pictures, not videos"),
        ({"prompt": "a cat", "model": I2V}, "send it as 'input_reference'"),
        ({"prompt": "a cat", "model": T2V, "size": "1792x1024"}, "1280x720, 720x1280, 960x960"),
        ({"prompt": "a cat", "model": T2V, "seconds": "soon"}, "'seconds'"),
        ({"prompt": "a cat", "model": "no/such-model"}, "Unknown model"),
    ],
)
def test_bad_video_requests_are_a_clear_400(video_service, fake, body, says):
    response = requests.post(f"{video_service.url}/v1/videos", json=body, timeout=30)
    assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
    assert fake.state.videos == {}


def test_unknown_ids_are_404_and_a_video_model_is_not_drawn_as_a_picture(video_service, fake):
    for path in ("/v1/videos/video_nope", "/v1/videos/video_nope/content", "/v1/videos/../etc"):
        response = requests.get(f"{video_service.url}{path}", timeout=10)
        assert response.status_code == 404, path
    response = requests.post(f"{video_service.url}/v1/images/generations", json={"prompt": "a cat", "model": T2V}, timeout=10)
    assert response.status_code == 400 and "POST /v1/videos" in response.json()["error"]["message"]
    models = {m["id"] for m in requests.get(f"{video_service.url}/v1/models", timeout=10).json()["data"]}
    assert {T2V, I2V} <= models


def test_without_a_keeper_the_content_is_the_upstreams_link_while_it_lasts(serve, fake):
    service = serve(video_poll_seconds=0.1)  # the test fixture keeps nothing unless asked
    video = _client(service).videos.create_and_poll(model=T2V, prompt="a cat")
    assert video.expires_at and video.expires_at > time.time()
    content = requests.get(f"{service.url}/v1/videos/{video.id}/content", allow_redirects=False, timeout=10)
    assert content.status_code == 302 and "/videos/" in content.headers["Location"]
    assert requests.get(f"{service.url}/v1/videos/{video.id}/content", timeout=10).content == CLIP


def test_a_job_outlives_the_process_that_submitted_it(fake, production_bin, tmp_path):
    """A rolling deploy: the job is submitted, the service stops mid-job, the next process (same
    data directory) polls it to the end and keeps it before any client asks again."""
    fake.state.video_queue_seconds, fake.state.video_seconds = 0.2, 2.5
    env = {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-roll1", "DATA_DIR": str(tmp_path), "VIDEO_POLL_SECONDS": "0.2"}
    first = Gunicorn(env, production_bin)
    assert first.wait_until_up(), first.stop()
    try:
        video = requests.post(f"{first.url}/v1/videos", json={"prompt": "a cat", "model": T2V}, timeout=30).json()
    finally:
        first.stop()
    assert video["status"] == "queued"
    [job] = fake.state.videos.values()
    polls_before = job["polls"]
    second = Gunicorn(env, production_bin)
    assert second.wait_until_up(), second.stop()
    try:
        assert wait_until(lambda: list((tmp_path / "images").glob("*.mp4")), 15), "the next process did not keep the clip"
        assert job["polls"] > polls_before
        answer = requests.get(f"{second.url}/v1/videos/{video['id']}", timeout=10).json()
        assert answer["status"] == "completed"
        assert requests.get(f"{second.url}/v1/videos/{video['id']}/content", timeout=10).content == CLIP
    finally:
        second.stop()


# --- from chat -------------------------------------------------------------------------------------


def _chat(service, messages, model=T2V, stream=True) -> str:
    body = {"model": model, "messages": messages, "stream": stream}
    response = post_chat(service.url, body, stream=stream, timeout=60)
    assert response.status_code == 200, response.text
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]"
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_video_model_in_chat_makes_a_video_and_says_what_it_is_doing(serve, fake, tmp_path, stream):
    fake.state.video_queue_seconds, fake.state.video_seconds = 0.3, 0.9
    service = serve(video_poll_seconds=0.1, heartbeat_seconds=0.3, image_store_dir=str(tmp_path))
    content = _chat(service, [{"role": "user", "content": "一只猫在海边奔跑，16:9"}], stream=stream)
    assert "🎬 第 1 个视频已提交" in content and "⏳ 第 1 个视频" in content, content
    assert "提交中✅" in content and "生成中✅" not in content  # said once the job is taken, not before
    assert "完成：1/1 个视频生成成功。" in content
    [link] = re.findall(r"\[▶️ 播放第 1 个视频（MP4）\]\(([^)]+)\)", content)
    assert link.startswith(f"{service.url}/images/") and link.endswith(".mp4")
    assert requests.get(link, timeout=10).content == CLIP  # kept at once: not SiliconFlow's expiring link
    [job] = fake.state.videos.values()
    assert job["body"]["image_size"] == "1280x720"
    # The chat model was asked for a prompt for motion, not for a still picture.
    [expansion] = [c for c in fake.state.chat_calls()]
    assert "video" in json.dumps(expansion.body)
    # A follow-up works as for pictures: the same prompt, size and model once more.
    again = _chat(
        service,
        [
            {"role": "user", "content": "一只猫在海边奔跑，16:9"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "再来一个"},
        ],
        stream=stream,
    )
    assert "完成：1/1 个视频生成成功。" in again and len(fake.state.videos) == 2
    assert "再做 1 个视频：沿用上一个的描述、尺寸和模型" in again
    second = [v for v in fake.state.videos.values() if v is not job][0]
    assert second["body"]["prompt"] == job["body"]["prompt"] and second["body"]["image_size"] == "1280x720"


def test_the_last_picture_becomes_the_first_frame_in_chat(serve, fake, tmp_path):
    service = serve(video_poll_seconds=0.1, image_store_dir=str(tmp_path), prompt_expansion=False)
    picture = _chat(service, [{"role": "user", "content": "画一只猫"}], model="Kwai-Kolors/Kolors")
    [poster] = images_in(picture).values()
    content = _chat(
        service,
        [
            {"role": "user", "content": "画一只猫"},
            {"role": "assistant", "content": picture},
            {"role": "user", "content": "让它跳起舞来"},
        ],
        model=I2V,
    )
    assert "完成：1/1 个视频生成成功。" in content, content
    [job] = fake.state.videos.values()
    assert job["body"]["image"].startswith("data:image/png;base64,") and job["body"]["model"] == I2V
    link = re.findall(r"\[▶️ 播放第 1 个视频（MP4）\]\(([^)]+)\)", content)[0]
    assert f"[![第 1 个视频的首帧]({poster})]({link})" in content  # the picture, linking to its video


def test_two_instances_sharing_redis_and_a_bucket_answer_for_each_others_jobs(fake, production_bin, redis_server, s3, tmp_path):
    bucket = s3.bucket()
    env = {
        "API_BASE_URL": fake.url,
        "API_KEYS": "sk-good-share1,sk-good-share2",
        "REDIS_URL": redis_server.url,
        "VIDEO_POLL_SECONDS": "0.2",
        **s3.env(bucket),
    }
    first = Gunicorn({**env, "DATA_DIR": str(tmp_path / "a")}, production_bin)
    second = Gunicorn({**env, "DATA_DIR": str(tmp_path / "b")}, production_bin)
    try:
        assert first.wait_until_up() and second.wait_until_up()
        client = openai.OpenAI(base_url=f"{first.url}/v1", api_key="x", max_retries=0, timeout=30)
        video = client.videos.create(model=T2V, prompt="a cat")
        other = openai.OpenAI(base_url=f"{second.url}/v1", api_key="x", max_retries=0, timeout=30)
        assert wait_until(lambda: other.videos.retrieve(video.id).status == "completed", 15)
        assert other.videos.download_content(video.id).read() == CLIP
        assert [v.id for v in other.videos.list().data] == [video.id]
        [job] = fake.state.videos.values()
        assert job["polls"] <= 15  # one poller per job across both instances (the lease), paced
    finally:
        first.stop()
        second.stop()


def test_a_job_that_never_finishes_ends_failed_at_video_timeout(serve, fake):
    fake.state.video_seconds = 600  # SiliconFlow never finishes it
    service = serve(video_poll_seconds=0.1, video_timeout=1.5)
    video = _client(service).videos.create_and_poll(model=T2V, prompt="a cat", poll_interval_ms=200)
    assert video.status == "failed" and "VIDEO_TIMEOUT" in video.error.message
    content = _chat(service, [{"role": "user", "content": "一只猫"}])
    assert "⚠️ 第 1 个视频没有生成" in content and "完成：0/1 个视频生成成功。" in content, content


def test_a_chat_that_stops_early_still_gets_its_video_through_the_submitted_lines_link(serve, fake, tmp_path):
    """Open WebUI's stop button: the answer ends mid-job, but its first line links the job."""
    fake.state.video_seconds = 1.0
    service = serve(video_poll_seconds=0.1, image_store_dir=str(tmp_path))
    response = post_chat(
        service.url, {"model": T2V, "messages": [{"role": "user", "content": "一只狗"}], "stream": True}, stream=True
    )
    said = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: {"):
            said += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        if "取回" in said:
            break
    response.close()  # the user pressed stop
    [link] = re.findall(r"\[这里取回\]\(([^)]+)\)", said)
    assert link.startswith(f"{service.url}/videos/video_")
    waiting = requests.get(link, allow_redirects=False, timeout=10)
    assert waiting.status_code == 200 and "refresh later" in waiting.text and waiting.headers["Refresh"] == "10"
    assert wait_until(lambda: requests.get(link, allow_redirects=False, timeout=10).status_code == 302, 10)
    assert requests.get(link, timeout=10).content == CLIP  # the clip was made and kept all the same


# --- a person's list, and old jobs pruned ---------------------------------------------------------

ADMIN = "operator-secret-0123456789"
DAY = 86400


def _person(service, name: str) -> tuple[str, openai.OpenAI]:
    made = requests.post(
        f"{service.url}/admin/api/keys", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    ).json()
    return made["id"], openai.OpenAI(base_url=f"{service.url}/v1", api_key=made["key"], max_retries=0, timeout=30)


def _listed(client: openai.OpenAI, order: str) -> list[str]:
    """Every page, as the SDK walks them (`after` the last id while `has_more`)."""
    return [video.id for video in client.videos.list(limit=7, order=order)]


def _reads_for_a_page(service, client: openai.OpenAI, redis_url: str | None) -> int | None:
    """How many record reads (GET, MGET) Redis served for one page of a person's list."""
    if redis_url is None:
        return None
    import redis

    counted = redis.Redis.from_url(redis_url)
    counted.config_resetstat()
    page = requests.get(f"{service.url}/v1/videos?limit=5", headers={"Authorization": f"Bearer {client.api_key}"}, timeout=10)
    assert page.status_code == 200
    stats = counted.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget"))


def _fewest_reads(service, client: openai.OpenAI, redis_url: str | None) -> int | None:
    counts = [_reads_for_a_page(service, client, redis_url) for _ in range(3)]
    return None if counts[0] is None else min(c for c in counts if c is not None)


@pytest.mark.parametrize("record", ["sqlite", "redis"])
def test_a_person_pages_through_their_own_videos_and_old_finished_jobs_are_pruned(serve, fake, tmp_path, request, record):
    shared = {"redis_url": request.getfixturevalue("redis_server").url} if record == "redis" else {}
    service = serve(
        admin_key=ADMIN, api_key=SERVICE_KEY, video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"), **shared
    )
    (alice, as_alice), (bob, as_bob) = _person(service, "alice"), _person(service, "bob")
    operator = openai.OpenAI(base_url=f"{service.url}/v1", api_key=SERVICE_KEY, max_retries=0, timeout=30)
    made = [client.videos.create_and_poll(model=T2V, prompt="a cat") for client in (as_alice, as_bob)]
    kept = _kept_link(service, made[0].id)
    # Many more, recorded as the service records them, at times the prune below sees as old or recent
    # (never old by today's clock, so that the poller's own prune leaves them alone).
    prune_at = time.time() + 40 * DAY
    jobs = service.services.videos.jobs
    seeded = [
        VideoJob(
            new_id(),
            T2V,
            f"job {n}",
            "1280x720",
            "5",
            int(prune_at - (35 if n % 5 < 3 else 1) * DAY) + n // 2,  # two by two in the same second: the id breaks the tie
            status="in_progress" if n % 7 == 0 else "completed",
            owner=alice if n % 3 else bob,
            next_poll=prune_at + DAY,  # not asked after: the fake has never heard of them
        )
        for n in range(45)
    ]
    _reads_for_a_page(service, as_alice, shared.get("redis_url"))  # the first list also indexes older records by owner
    # The fewest of three: the background poller may read a record while a page is counted.
    reads = _fewest_reads(service, as_alice, shared.get("redis_url"))
    for job in seeded:
        if job.finished:
            jobs.save(job)
    # A page costs the same reads however many jobs are recorded (the whole index was read, job by job).
    assert _fewest_reads(service, as_alice, shared.get("redis_url")) == reads
    for job in seeded:
        if not job.finished:  # saved after the count: the poller reads these
            jobs.save(job)
    everyone = [*made, *seeded]  # the Video objects and the records: each has an id, created_at and status
    owners = {made[0].id: alice, made[1].id: bob, **{job.id: job.owner for job in seeded}}

    def newest_first(owner: str | None = None) -> list[str]:
        ordered = sorted(everyone, key=lambda job: (job.created_at, job.id), reverse=True)
        return [job.id for job in ordered if owner is None or owners[job.id] == owner]

    mine, theirs = newest_first(alice), newest_first(bob)
    assert len(mine) == 31 and len(theirs) == 16
    assert _listed(as_alice, "desc") == mine and _listed(as_alice, "asc") == mine[::-1]
    assert _listed(as_bob, "desc") == theirs
    assert _listed(operator, "desc") == newest_first()
    page = requests.get(
        f"{service.url}/v1/videos",
        params={"limit": 5, "after": theirs[0]},  # another person's id: no way into bob's list, from alice's first
        headers={"Authorization": f"Bearer {as_alice.api_key}"},
        timeout=10,
    ).json()
    assert [v["id"] for v in page["data"]] == mine[:5] and page["has_more"]

    worker = service.services.videos
    removed = worker.prune(now=prune_at)
    gone = {job.id for job in everyone if job.created_at < prune_at - 30 * DAY and job.status == "completed"}
    assert removed == len(gone) and {made[0].id, made[1].id} <= gone
    assert worker.prune(now=prune_at + 60) is None  # once an hour at most
    assert worker.prune(now=prune_at + 3601) == 0
    assert _listed(as_alice, "desc") == [i for i in mine if i not in gone]
    assert _listed(operator, "asc") == [i for i in newest_first()[::-1] if i not in gone]
    assert all(
        requests.get(
            f"{service.url}/v1/videos/{video.id}", headers={"Authorization": f"Bearer {SERVICE_KEY}"}, timeout=10
        ).status_code
        == (404 if video.id in gone else 200)
        for video in everyone
    )
    assert requests.get(kept, timeout=10).content == CLIP  # the record goes, not the clip a chat answer links
    if record == "redis":
        import redis

        left = redis.Redis.from_url(shared["redis_url"])
        assert not [key for key in left.keys("*") if any(i.encode() in key for i in gone)]  # records, leases
        for index, ids in (("index", newest_first()), (f"owner:{alice}", mine), (f"owner:{bob}", theirs)):
            assert {i.decode() for i in left.zrange(f"siliconflow:videos:{index}", 0, -1)} == set(ids) - gone, index


def test_a_persons_jobs_are_not_hidden_behind_ten_thousand_of_anothers(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, video_poll_seconds=0.1)
    (alice, as_alice), (bob, _) = _person(service, "alice"), _person(service, "bob")
    jobs, now = service.services.videos.jobs, int(time.time())
    hers = VideoJob(new_id(), T2V, "a cat", "1280x720", "5", now - 600, status="completed", owner=alice)
    jobs.save(hers)
    for n in range(10_000):
        jobs.save(VideoJob(new_id(), T2V, "a dog", "1280x720", "5", now - 300 + n // 100, status="completed", owner=bob))
    assert [video.id for video in as_alice.videos.list().data] == [hers.id]


@pytest.mark.parametrize("record", ["sqlite", "redis"])
def test_jobs_recorded_before_they_were_listed_by_owner_are_listed_by_owner(serve, fake, tmp_path, request, record):
    """An upgrade: the record as the previous version wrote it (no owner column, no owner index)."""
    from storage.user_keys import RedisKeys, SqliteKeys, make

    redis_url = request.getfixturevalue("redis_server").url if record == "redis" else None
    users = RedisKeys(redis_url) if redis_url else SqliteKeys(str(tmp_path / "users.sqlite3"))
    (alice, secret), (bob, _) = make("alice", None, None), make("bob", None, None)
    users.save(alice)
    users.save(bob)
    now = int(time.time())
    old = [
        VideoJob(new_id(), T2V, f"job {n}", "1280x720", "5", now - 100 + n, status="completed", owner=owner)
        for n, owner in enumerate([alice.id, bob.id, alice.id, None, alice.id])
    ]
    if redis_url:
        import redis

        written = redis.Redis.from_url(redis_url)
        for job in old:
            written.set(f"siliconflow:videos:job:{job.id}", job.to_json())
            written.zadd("siliconflow:videos:index", {job.id: job.created_at})
    else:
        with sqlite3.connect(tmp_path / "videos.sqlite3") as written:
            written.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, created REAL, finished INTEGER, body TEXT)")
            written.execute("CREATE TABLE leases (id TEXT PRIMARY KEY, until REAL)")
            written.executemany("INSERT INTO jobs VALUES (?, ?, 1, ?)", [(j.id, j.created_at, j.to_json()) for j in old])
    service = serve(admin_key=ADMIN, data_dir=str(tmp_path), redis_url=redis_url, video_poll_seconds=0.1)
    as_alice = openai.OpenAI(base_url=f"{service.url}/v1", api_key=secret, max_retries=0, timeout=30)
    hers = [job.id for job in old if job.owner == alice.id]
    assert [video.id for video in as_alice.videos.list(limit=2)] == hers[::-1]
    new = as_alice.videos.create_and_poll(model=T2V, prompt="a cat")
    assert [video.id for video in as_alice.videos.list(limit=2, order="asc")] == [*hers, new.id]


# --- SiliconFlow's own video API on this service -----------------------------------------------------


def _siliconflow(service, path: str, body: dict, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{service.url}/v1/video/{path}", json=body, headers=headers, timeout=30)


def test_siliconflows_submit_and_status_reach_succeed_with_the_kept_clip(video_service, fake, tmp_path):
    """LobeChat's SiliconCloud video runtime: submit, then poll /v1/video/status for Succeed and
    results.videos[0].url, which here is the clip this service kept (SiliconFlow's lasts an hour)."""
    submitted = _siliconflow(
        video_service,
        "submit",
        {"model": T2V, "prompt": "a cat running on the beach", "image_size": "720x1280", "seed": 7, "negative_prompt": "blur"},
    )
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["requestId"]
    seen: list[dict] = []

    def succeeded() -> bool:
        seen.append(_siliconflow(video_service, "status", {"requestId": request_id}).json())
        return seen[-1]["status"] == "Succeed"

    assert wait_until(succeeded, 15, interval=0.05), seen[-1]
    assert {"InQueue", "InProgress"} & {answer["status"] for answer in seen[:-1]}
    done = seen[-1]
    [clip] = done["results"]["videos"]
    assert "/images/" in clip["url"] and requests.get(clip["url"], timeout=10).content == CLIP  # the kept MP4
    assert done["results"]["seed"] == 4242  # the one SiliconFlow says it used
    assert done["reason"] == "" and isinstance(done["results"]["timings"]["inference"], int)
    [job] = fake.state.videos.values()
    assert job["body"] == {
        "model": T2V,
        "prompt": "a cat running on the beach",
        "image_size": "720x1280",
        "seed": 7,
        "negative_prompt": "blur",
    }
    # the same job through the Videos API
    assert _client(video_service).videos.retrieve(request_id).status == "completed"


def test_siliconflows_submit_takes_a_first_frame_in_image(video_service, fake):
    frame = "data:image/png;base64," + base64.b64encode(FRAME).decode()
    submitted = _siliconflow(video_service, "submit", {"model": I2V, "prompt": "the cat dances", "image": frame})
    assert submitted.status_code == 200, submitted.text
    [job] = fake.state.videos.values()
    assert job["body"]["model"] == I2V and job["body"]["image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("submit", {"model": T2V}, "prompt"),
        ("submit", {"model": T2V, "prompt": "a cat", "image_size": "1920x1080"}, "image_size"),
        ("submit", {"model": I2V, "prompt": "a cat"}, "image"),
        ("submit", {"model": T2V, "prompt": "a cat", "image": 7}, "image"),
        ("submit", {"model": "Kwai-Kolors/Kolors", "prompt": "a cat"}, "model"),
        ("status", {}, "requestId"),
        ("status", {"requestId": "video_00000000000000000000000000000000"}, "requestId"),
    ],
)
def test_siliconflows_video_paths_refuse_what_they_cannot_take_naming_the_field(video_service, fake, path, body, param):
    response = _siliconflow(video_service, path, body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["message"]
    assert fake.state.videos == {}


def test_siliconflows_video_paths_keep_user_keys_quotas_and_owners(serve, fake, tmp_path):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, video_poll_seconds=0.1, image_store_dir=str(tmp_path / "kept"))
    made = requests.post(
        f"{service.url}/admin/api/keys",
        json={"name": "alice", "daily_images": 5, "daily_videos": 1},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    ).json()
    _, as_bob = _person(service, "bob")
    assert _siliconflow(service, "submit", {"model": T2V, "prompt": "a cat"}).status_code == 401  # a key is needed
    first = _siliconflow(service, "submit", {"model": T2V, "prompt": "a cat"}, made["key"])
    assert first.status_code == 200, first.text
    again = _siliconflow(service, "submit", {"model": T2V, "prompt": "a dog"}, made["key"])
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"  # one video a day
    request_id = first.json()["requestId"]
    assert _siliconflow(service, "status", {"requestId": request_id}, made["key"]).status_code == 200
    assert _siliconflow(service, "status", {"requestId": request_id}, as_bob.api_key).status_code == 404  # not bob's
    assert _siliconflow(service, "status", {"requestId": request_id}, SERVICE_KEY).status_code == 200  # the operator's key
    assert len(fake.state.videos) == 1


def test_an_unknown_path_names_siliconflows_video_paths_among_what_is_offered(video_service):
    response = requests.post(f"{video_service.url}/v1/video/query", json={}, timeout=10)
    assert response.status_code == 404 and "POST /v1/video/submit and /v1/video/status" in response.json()["error"]["message"]
