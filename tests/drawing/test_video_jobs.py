"""Video jobs in the background: each look at a job is one status call with the key that submitted
it, paced and leased (one poller per job), and a finished clip is kept at once (its link expires);
a job that cannot finish ends failed with a reason; old finished records are pruned by one process.
Against the fake SiliconFlow over real HTTP; the poller is driven step by step, time given as a
record's own times, not slept."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest

from drawing.video_jobs import LEASE_SECONDS, PRUNE_EVERY
from siliconflow.client import video_submit
from siliconflow.leases import key_id
from storage.video_records import COMPLETED, FAILED, QUEUED, submitted
from tests.conftest import GOOD_KEYS
from tests.fake_siliconflow import CLIP
from tests.helpers import post_chat

T2V = "Wan-AI/Wan2.2-T2V-A14B"
DAY = 86400.0


def _polls(fake) -> int:
    """Status calls SiliconFlow was asked."""
    with fake.state.lock:
        return sum(call.path == "/v1/video/status" for call in fake.state.calls)


def _submit(service, key: str = GOOD_KEYS[0], **record) -> str:
    """A job SiliconFlow has taken, recorded as the drawing records it: its id."""
    services = service.services
    sent = {"model": T2V, "prompt": "a cat running", "image_size": "1280x720"}
    upstream = video_submit(services.http, services.settings.api_base_url, key, sent, 10)
    job = replace(submitted(T2V, sent, "5", key_id(key), upstream, None), **record)
    services.videos.jobs.save(job)
    return job.id


@pytest.fixture
def kept(serve, tmp_path):
    """A service whose poller is not running (nothing asked it yet): driven by `step`."""
    return serve(video_poll_seconds=60, image_store_dir=str(tmp_path / "kept"), prompt_expansion=False)


def test_a_chat_video_job_is_submitted_polled_and_its_clip_kept(serve, fake, tmp_path):
    fake.state.video_queue_seconds, fake.state.video_seconds = 0.2, 0.3
    service = serve(video_poll_seconds=0.05, image_store_dir=str(tmp_path), prompt_expansion=False)
    response = post_chat(service.url, {"model": T2V, "messages": [{"role": "user", "content": "一只猫在海边奔跑"}]})
    content = response.json()["choices"][0]["message"]["content"]
    [video_id] = re.findall(r"\[这里取回\]\([^)]*/videos/(video_[0-9a-f]+)\)", content)
    job = service.services.videos.jobs.get(video_id)
    assert (job.status, job.progress, job.seed) == (COMPLETED, 100, 4242) and job.kept
    assert (tmp_path / job.kept).read_bytes() == CLIP and f"/images/{job.kept}" in content
    [upstream] = fake.state.videos.values()
    assert upstream["polls"] >= 2 and job.upstream_id in fake.state.videos  # queued, then done: asked again
    assert "完成：1/1 个视频生成成功。" in content


def test_each_look_is_one_status_call_paced_by_the_poll_interval(kept, fake):
    fake.state.video_queue_seconds = 600  # SiliconFlow keeps it in its queue
    worker = kept.services.videos
    video_id = _submit(kept, key=GOOD_KEYS[1])
    looked = worker.step(video_id)
    assert (looked.status, looked.position, _polls(fake)) == (QUEUED, 3, 1)
    assert time.time() + 60 * 0.8 < looked.next_poll <= time.time() + 60  # asked again in about VIDEO_POLL_SECONDS
    assert worker.step(video_id).status == QUEUED and _polls(fake) == 1  # not before then, however often looked at
    worker.jobs.update(replace(worker.jobs.get(video_id), next_poll=0))  # its time has come
    worker.step(video_id)
    assert _polls(fake) == 2
    assert {call.key for call in fake.state.calls if call.path == "/v1/video/status"} == {GOOD_KEYS[1]}  # the submitting key


def test_a_job_another_process_is_looking_at_is_left_to_it(kept, fake):
    worker = kept.services.videos
    video_id = _submit(kept)
    assert worker.jobs.claim(video_id, LEASE_SECONDS)  # another worker's lease
    assert worker.step(video_id) is None and _polls(fake) == 0
    worker.jobs.let_go(video_id)
    assert worker.step(video_id) is not None and _polls(fake) == 1
    assert worker.jobs.claim(video_id, LEASE_SECONDS)  # and the look let it go when it ended


def test_a_finished_clip_is_kept_at_once_and_never_asked_for_again(kept, fake, tmp_path):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    worker = kept.services.videos
    job = worker.step(_submit(kept))
    assert (job.status, job.progress, job.seed, job.position) == (COMPLETED, 100, 4242, None)
    assert (tmp_path / "kept" / job.kept).read_bytes() == CLIP and job.completed_at >= job.created_at
    worker.jobs.update(replace(job, next_poll=0))
    worker.step(job.id)
    assert _polls(fake) == 1  # finished: not asked again


def test_without_a_keeper_the_upstreams_link_is_given_with_when_it_expires(serve, fake):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    service = serve(video_poll_seconds=60, prompt_expansion=False)
    job = service.services.videos.step(_submit(service))
    assert job.status == COMPLETED and job.kept is None and job.url.startswith(f"{fake.url}/videos/")
    assert time.time() + 3500 < job.expires_at <= time.time() + 3600


def test_a_clip_that_cannot_be_fetched_leaves_its_link_and_says_why(kept, fake, logged):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    fake.state.video_link_seconds = 0  # the link is refused (403) by the time it is fetched
    job = kept.services.videos.step(_submit(kept))
    assert job.status == COMPLETED and job.kept is None and job.url.startswith(f"{fake.url}/videos/")
    assert job.not_kept and job.notes and not re.search(r"[\u4e00-\u9fff]", " ".join(job.notes))  # English, for the API
    assert logged.lines(rf"video {job.id}: the clip could not be kept")


@pytest.mark.parametrize(
    "record, code, asks",
    [
        ({"key_id": key_id("sk-good-removed1")}, "video_key_gone", 0),  # its key was taken out of the pool
        ({"created_at": int(time.time() - 1801)}, "video_timeout", 0),  # past VIDEO_TIMEOUT: not asked again
        ({"upstream_id": "not-a-job-of-siliconflows"}, "upstream_refused", 1),  # SiliconFlow does not know it
    ],
)
def test_a_job_that_cannot_finish_ends_failed_with_its_reason(kept, fake, record, code, asks):
    job = kept.services.videos.step(_submit(kept, **record))
    assert job.status == FAILED and job.error["code"] == job.reason["code"] == code, job.error
    assert job.error["message"] and _polls(fake) == asks


def test_a_job_siliconflow_refused_carries_its_words(kept, fake):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    fake.state.video_fail = "content moderation: the prompt was refused"
    job = kept.services.videos.step(_submit(kept))
    assert job.status == FAILED and job.error["code"] == "video_refused"
    assert (
        "content moderation" in job.error["message"]
        and ["why", "content moderation: the prompt was refused"] in job.reason["params"]
    )


def test_old_finished_records_are_pruned_by_one_process_and_their_clips_stay(kept, fake, tmp_path):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    worker, now = kept.services.videos, time.time()
    old, recent = worker.step(_submit(kept)), worker.step(_submit(kept))
    worker.jobs.save(replace(old, created_at=int(now - 31 * DAY)))  # made a month ago (VIDEO_RETENTION_DAYS is 30)
    waiting = _submit(kept, created_at=int(now - 40 * DAY))  # unfinished: never pruned
    later = now + 3600
    assert worker.prune(later) == 1 and worker.prune(later) is None  # once per PRUNE_EVERY, by whoever is first
    assert worker.jobs.get(old.id) is None and worker.jobs.get(recent.id) and worker.jobs.get(waiting)
    assert (tmp_path / "kept" / old.kept).read_bytes() == CLIP  # a chat answer links it for good
    assert worker.prune(later + PRUNE_EVERY) == 0


def test_deleting_a_job_removes_its_kept_clip_then_its_record(kept, fake, tmp_path):
    fake.state.video_queue_seconds = fake.state.video_seconds = 0
    worker = kept.services.videos
    job = worker.step(_submit(kept))
    worker.delete(job)
    assert not (tmp_path / "kept" / job.kept).exists() and worker.jobs.get(job.id) is None
