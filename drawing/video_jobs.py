"""Video jobs in the background: polled at SiliconFlow and kept, by whichever process holds a
job's lease, whether or not a client waits.

A job takes minutes and belongs to the account whose key submitted it (SiliconFlow refuses its
status to another account's key), so the record (storage/video_records.py) keeps the key's id and
every poll uses that key. Each process runs one `VideoWorker` thread: every `poll_seconds` it
takes the lease of each unfinished job it can (so one poller per job, across processes), asks
SiliconFlow once, and on success downloads the clip at once (its link expires within the hour)
into the keeper, streamed through a file on disk. Once an hour one process removes the records of
jobs finished more than VIDEO_RETENTION_DAYS ago.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from core.background import Background
from core.errors import Failure, Reason, UpstreamError
from drawing.reasons import en
from siliconflow.client import VideoStatus
from siliconflow.pool import KeyPool
from storage.pictures import Keeper
from storage.video_records import COMPLETED, FAILED, IN_PROGRESS, QUEUED, Jobs, VideoJob

log = logging.getLogger("siliconflow_proxy.videos")

LEASE_SECONDS = 30.0  # a poller holds a job this long per look (a download renews it)
PRUNE_EVERY = 3600.0  # finished jobs past their retention are looked for this often, by one process


# --- polling and keeping, in the background --------------------------------------------------------


@dataclass
class VideoSettings:
    poll_seconds: float
    timeout: float  # VIDEO_TIMEOUT: a job not finished by then ends failed
    max_bytes: int
    link_seconds: float = 3600.0  # how long the upstream's link lasts (expires_at when nobody keeps it)
    retention_seconds: float = 30 * 86400.0  # VIDEO_RETENTION_DAYS: a finished job's record is kept this long


class VideoWorker:
    """One thread per process (started on first use; gunicorn forks after the app is built)."""

    def __init__(
        self,
        jobs: Jobs,
        pool: KeyPool,
        status: Callable[[str, str], VideoStatus],
        download: Callable[[str, Any], int],
        keeper: Keeper | None,
        settings: VideoSettings,
    ):
        self.jobs, self.pool, self._status, self._download = jobs, pool, status, download
        self.keeper, self.settings = keeper, settings
        self._wake = threading.Event()
        self._loop = Background("video-jobs", self._run, wake=self._wake.set)
        self._changed = threading.Condition()
        self.polls = 0  # status calls made by this process (bench)

    def ensure_running(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._loop.stop()

    def _run(self, stopping: threading.Event) -> None:
        failing: str | None = None
        while not stopping.is_set():
            try:
                for job_id in self.jobs.unfinished():
                    if stopping.is_set():
                        break
                    self.step(job_id)
                self.prune()
            except Exception as exc:  # noqa: BLE001 - the record failing (Redis away, a disk) must not end the thread
                if failing != type(exc).__name__:
                    failing = type(exc).__name__
                    log.warning("video jobs cannot be read now (%s); asked again every %gs", failing, self.settings.poll_seconds)
            else:
                if failing is not None:
                    log.info("video jobs can be read again")
                failing = None
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def step(self, job_id: str) -> VideoJob | None:
        """One look at a job, if no other process is looking at it now."""
        if not self.jobs.claim(job_id, LEASE_SECONDS):
            return None
        try:
            job = self.jobs.get(job_id)
            if job is None or job.finished or job.next_poll > time.time():
                return job
            job = replace(self._look(job), next_poll=time.time() + self.settings.poll_seconds * 0.9)
            if not self.jobs.update(job):
                # Deleted while it was looked at (a download takes seconds): a clip kept meanwhile
                # goes too, and the record is not written back.
                if job.kept:
                    self._remove_clip(job)
                return None
            return job
        finally:
            self.jobs.let_go(job_id)
            with self._changed:
                self._changed.notify_all()

    def prune(self, now: float | None = None) -> int | None:
        """The records of finished jobs made more than VIDEO_RETENTION_DAYS before `now` removed,
        by one process at most once every PRUNE_EVERY: how many, or None when it was not due here.

        The record only: a kept clip stays, as a chat answer links it for good (the store has its
        own cap). An unfinished job is never removed."""
        now = time.time() if now is None else now
        if not self.jobs.due("prune", PRUNE_EVERY, now):
            return None
        removed = self.jobs.prune(now - self.settings.retention_seconds)
        if removed:
            days = self.settings.retention_seconds / 86400
            log.info("video jobs: %d finished job record(s) older than %g days removed (VIDEO_RETENTION_DAYS)", removed, days)
        return removed

    def delete(self, job: VideoJob) -> None:
        """DELETE /v1/videos/{id}: the kept clip, then the record, so that a clip that cannot be
        removed now (the bucket away) leaves the job to be deleted again, not a clip nobody can
        reach to remove. Raises UploadError."""
        if job.kept and self.keeper is not None:
            self.keeper.delete(job.kept)
        self.jobs.delete(job.id)

    def _remove_clip(self, job: VideoJob) -> None:
        try:
            if job.kept and self.keeper is not None:
                self.keeper.delete(job.kept)
        except Exception as exc:  # noqa: BLE001 - an UploadError: said, the poller goes on
            why = getattr(exc, "reason", None) or Reason.of("internal")
            log.warning("video %s was deleted while kept; its clip %s could not be removed (%s)", job.id, job.kept, why.code)

    def wait_for_change(self, timeout: float) -> None:
        """Until this process's poller has looked at a job again, or `timeout` (a job polled by
        another process is read again after `timeout`)."""
        with self._changed:
            self._changed.wait(timeout)

    def _look(self, job: VideoJob) -> VideoJob:
        now = time.time()
        if now - job.created_at > self.settings.timeout:
            return _failed(job, Reason.of("video_timeout", seconds=self.settings.timeout))
        key = self.pool.key_for(job.key_id)
        if key is None:
            return _failed(job, Reason.of("video_key_gone"))
        try:
            self.polls += 1
            answer = self._status(key, job.upstream_id)
        except UpstreamError as exc:
            if exc.kind in (Failure.AUTH, Failure.FORBIDDEN, Failure.BAD_REQUEST):
                return _failed(job, exc.reason)
            log.info("video %s: status not read now (%s); asked again later", job.id, exc.kind)
            return job
        if answer.status == "Failed":
            return _failed(job, Reason.of("video_refused", why=answer.reason or "-"))
        if answer.status == "InQueue":
            return replace(job, status=QUEUED, position=answer.position, progress=0)
        if answer.status != "Succeed" or not answer.url:
            elapsed = now - job.created_at
            return replace(job, status=IN_PROGRESS, position=None, progress=min(95, 5 + int(elapsed / 3)))
        if any(key in answer.url for key in self.pool.keys):
            # Fetching it would send the key to wherever the link points, keeping it would write it
            # into the record and a redirect would hand it to the client: the job ends here instead.
            return _failed(job, Reason.of("video_key_in_link"))
        return self._keep(replace(job, seed=answer.seed if answer.seed is not None else job.seed), answer.url)

    def _keep(self, job: VideoJob, url: str) -> VideoJob:
        done = replace(job, status=COMPLETED, progress=100, completed_at=int(time.time()), position=None, url=url)
        if self.keeper is None:
            return replace(done, url=url, expires_at=int(time.time() + self.settings.link_seconds))
        name = f"{_name_for(job)}.mp4"
        with tempfile.TemporaryFile(prefix="video-") as spool:
            try:
                self._download(url, spool)
                spool.seek(0)
                self.keeper.put(name, spool, "video/mp4")
            except Exception as exc:  # noqa: BLE001 - an UploadError or a download failure: the link stays
                why = getattr(exc, "reason", None) or Reason.of("download_failed")
                log.warning("video %s: the clip could not be kept (%s); the upstream's link is given", job.id, why.code)
                expires = int(time.time() + self.settings.link_seconds)
                return replace(done, expires_at=expires, notes=[*job.notes, en(why)], not_kept=why.code)
        return replace(done, kept=name)


def _name_for(job: VideoJob) -> str:
    """The clip's name in the keeper: one per job, not the bytes' hash as a picture's is, so that
    deleting a job removes its clip without asking whether another job kept the same bytes (and
    without a race with one keeping them right then)."""
    return hashlib.sha256(f"{job.id}:{job.upstream_id}".encode()).hexdigest()


def _failed(job: VideoJob, reason: Reason) -> VideoJob:
    return replace(
        job,
        status=FAILED,
        completed_at=int(time.time()),
        position=None,
        error={"code": reason.code, "message": en(reason)},
        reason={"code": reason.code, "params": [[k, v] for k, v in reason.params if not isinstance(v, Reason)]},
    )
