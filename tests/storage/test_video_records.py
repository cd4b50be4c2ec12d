"""Video jobs' records (video_records.py), each test in a SQLite file and in a real Redis: a job
recorded as submitted, a person's jobs listed page by page from their own index (nobody else's,
not the operator's), finished jobs past retention pruned at a moment the test gives, a deleted job
never brought back by a late update, one poller per job, and chores taken by one process a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from storage.video_records import ALL, COMPLETED, FAILED, IN_PROGRESS, RedisJobs, SqliteJobs, VideoJob, submitted

NOW = 1_800_000_000.0
DAY = 86_400
SENT = {"model": "Wan-AI/Wan2.2-I2V-A14B", "prompt": "a cat running", "image_size": "1280x720", "seed": 42, "image": "data:"}


@pytest.fixture(params=["sqlite", "redis"])
def open_jobs(request, tmp_path):
    """`open_jobs()`: the store, opened again by each call (another process, on the same records)."""
    if request.param == "sqlite":
        return lambda: SqliteJobs(str(tmp_path / "videos.sqlite3"))
    url = request.getfixturevalue("redis_server").url
    return lambda: RedisJobs(url, prefix="test:videos:")


def _job(owner: str | None, created: float, status: str = COMPLETED) -> VideoJob:
    job = submitted(SENT["model"], SENT, "5", "kid-1", f"up-{created}", owner)
    return replace(job, created_at=int(created), status=status)


def test_a_submitted_job_is_recorded_with_whose_it_is_and_what_was_sent(open_jobs):
    jobs = open_jobs()
    job = submitted(SENT["model"], SENT, "5", "kid-1", "upstream-1", "uk_alice", ("size changed to 1280x720",))
    jobs.save(job)
    found = open_jobs().get(job.id)
    assert found == job and job.id.startswith("video_")
    assert (found.owner, found.key_id, found.upstream_id) == ("uk_alice", "kid-1", "upstream-1")
    assert (found.prompt, found.size, found.seed, found.has_input) == ("a cat running", "1280x720", 42, True)
    assert found.notes == ["size changed to 1280x720"] and not found.finished
    assert jobs.unfinished() == [job.id] and jobs.get("video_unknown") is None


def test_a_persons_jobs_are_listed_newest_first_page_by_page_and_nobody_elses(open_jobs):
    jobs = open_jobs()
    alices = [_job("uk_alice", NOW + i * 10) for i in range(5)]
    others = [_job("uk_bob", NOW + i * 10 + 5) for i in range(3)] + [_job(None, NOW + 100)]
    for job in alices + others:
        jobs.save(job)
    newest = [job.id for job in reversed(alices)]
    first, more = jobs.newest(2, None, False, owner="uk_alice")
    assert [job.id for job in first] == newest[:2] and more
    second, more = jobs.newest(2, first[-1].id, False, owner="uk_alice")
    assert [job.id for job in second] == newest[2:4] and more
    last, more = jobs.newest(2, second[-1].id, False, owner="uk_alice")
    assert [job.id for job in last] == newest[4:] and not more
    oldest, _ = jobs.newest(3, None, True, owner="uk_alice")
    assert [job.id for job in oldest] == [job.id for job in alices[:3]]
    # Another person's job as the place to start gives nothing of its place away: the first page.
    assert [job.id for job in jobs.newest(2, others[0].id, False, owner="uk_alice")[0]] == newest[:2]
    everyone, more = jobs.newest(20, None, False, owner=ALL)  # the operator's key sees every job
    assert len(everyone) == 9 and not more and everyone[0].owner is None


def test_finished_jobs_past_retention_are_pruned_and_running_ones_kept(open_jobs):
    jobs = open_jobs()
    old_done, old_failed = _job("uk_alice", NOW - 10 * DAY), _job("uk_alice", NOW - 9 * DAY, FAILED)
    old_running, recent = _job("uk_alice", NOW - 8 * DAY, IN_PROGRESS), _job("uk_alice", NOW - 1 * DAY)
    for job in (old_done, old_failed, old_running, recent):
        jobs.save(job)
    assert jobs.prune(NOW - 7 * DAY) == 2
    assert jobs.get(old_done.id) is None and jobs.get(old_failed.id) is None
    listed, more = jobs.newest(2, None, False, owner="uk_alice")
    assert [job.id for job in listed] == [recent.id, old_running.id] and not more  # gone from the person's list too
    assert jobs.unfinished() == [old_running.id]
    assert jobs.prune(NOW - 7 * DAY) == 0


def test_a_job_deleted_while_it_was_polled_is_not_brought_back(open_jobs):
    jobs = open_jobs()
    job = _job("uk_alice", NOW, IN_PROGRESS)
    jobs.save(job)
    assert jobs.delete(job.id) and not jobs.delete(job.id)
    assert not open_jobs().update(replace(job, status=COMPLETED, progress=100))  # the poller's late write
    assert jobs.get(job.id) is None and jobs.unfinished() == []
    assert jobs.newest(10, None, False, owner="uk_alice") == ([], False)


def test_a_finished_job_leaves_the_unfinished_ones(open_jobs):
    jobs = open_jobs()
    job = _job("uk_alice", NOW, IN_PROGRESS)
    jobs.save(job)
    assert jobs.update(replace(job, status=COMPLETED, progress=100))
    assert jobs.unfinished() == [] and jobs.get(job.id).status == COMPLETED


def test_one_process_at_a_time_polls_a_job(open_jobs):
    mine, theirs = open_jobs(), open_jobs()
    assert mine.claim("video_1", 60) and not theirs.claim("video_1", 60)
    assert theirs.claim("video_2", 60)  # another job, another lease
    mine.let_go("video_1")
    assert theirs.claim("video_1", 60)


def test_a_chore_is_taken_by_one_process_per_interval(open_jobs):
    mine, theirs = open_jobs(), open_jobs()
    assert mine.due("prune", 3600, NOW)
    assert not theirs.due("prune", 3600, NOW + 1) and not mine.due("prune", 3600, NOW + 3599)
    assert theirs.due("keep", 3600, NOW)  # another chore is due on its own
    assert theirs.due("prune", 3600, NOW + 3600)
    assert not mine.due("prune", 3600, NOW + 3601)
