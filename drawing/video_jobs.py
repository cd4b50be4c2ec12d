"""Video jobs: submitted to SiliconFlow through the key pool, recorded durably, and polled and kept
in the background by whichever process holds the job's lease, whether or not a client waits.

A job takes minutes and belongs to the account whose key submitted it (SiliconFlow refuses its
status to another account's key), so the record keeps the key's id and every poll uses that key.
The record lives in a SQLite file in the service's data directory (shared by the workers and by
the next process after a restart) or in Redis (shared by every instance). Each process runs one
`VideoWorker` thread: every `poll_seconds` it takes the lease of each unfinished job it can (so
one poller per job, across processes), asks SiliconFlow once, and on success downloads the clip
at once (its link expires within the hour) into the keeper, streamed through a file on disk. Once
an hour one process removes the records of jobs finished more than VIDEO_RETENTION_DAYS ago.
Both records index jobs by owner, so a person's list reads their page only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.background import Background
from core.errors import Failure, Reason, UpstreamError
from drawing.reasons import en
from siliconflow.client import VideoStatus
from siliconflow.failover import KEY_ONLY, UNSURE
from siliconflow.pool import KeyPool
from storage.pictures import Keeper
from storage.redis_client import redis_client
from storage.sqlite_file import SqliteFile

log = logging.getLogger("siliconflow_proxy.videos")

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
FINISHED = (COMPLETED, FAILED)
ALL = object()  # every owner's jobs (the operator's key)
LEASE_SECONDS = 30.0  # a poller holds a job this long per look (a download renews it)
PRUNE_EVERY = 3600.0  # finished jobs past their retention are looked for this often, by one process


@dataclass
class VideoJob:
    id: str
    model: str
    prompt: str
    size: str
    seconds: str
    created_at: int
    status: str = QUEUED
    progress: int = 0
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, str] | None = None  # {"code", "message"} in English, when failed
    reason: dict[str, Any] | None = None  # the failure as a Reason (code, params) for the chat's words
    key_id: str = ""  # the pool's id of the key that submitted it: its account polls
    upstream_id: str = ""  # SiliconFlow's requestId
    position: int | None = None  # in SiliconFlow's queue, when it says
    kept: str | None = None  # the keeper's name for the MP4
    url: str | None = None  # the upstream's link, when nobody keeps it
    seed: int | None = None
    negative_prompt: str | None = None
    has_input: bool = False
    notes: list[str] = field(default_factory=list)  # English, for the Videos API's answer
    not_kept: str | None = None  # why the keeper could not keep it (a reason code), when it could not
    owner: str | None = None  # the user key that made it (only it sees the job), None: the operator's key
    next_poll: float = 0.0  # (time.time()) not asked again before: one pace per job, however many processes

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> VideoJob:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def new_id() -> str:
    return f"video_{secrets.token_hex(16)}"


# --- where jobs are recorded ------------------------------------------------------------------------


class SqliteJobs:
    """Jobs in a SQLite file: every worker of this instance, and the next process after a restart.

    A job's owner and times are columns beside its JSON record, indexed, so that a person's page of
    jobs, the unfinished ones and those to prune are read without reading everyone's records.
    """

    def __init__(self, path: str):
        self.path = path
        self._db = SqliteFile(path).db
        db = self._db()
        db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, finished INTEGER, body TEXT, owner TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, until REAL)")
        with self._transaction() as db:  # one process adds the column, the others then see it
            if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                # A file written before jobs were listed by owner: the column is filled from the records.
                db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
                db.execute("UPDATE jobs SET owner = json_extract(body, '$.owner')")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created, id)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created, id)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (finished, created)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def save(self, job: VideoJob) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO jobs (id, created, finished, body, owner) VALUES (?, ?, ?, ?, ?)",
            (job.id, job.created_at, int(job.finished), job.to_json(), job.owner),
        )

    def update(self, job: VideoJob) -> bool:
        """Save `job` only if its record is still there: False when it was deleted meanwhile."""
        return (
            self._db()
            .execute("UPDATE jobs SET finished = ?, body = ? WHERE id = ?", (int(job.finished), job.to_json(), job.id))
            .rowcount
            > 0
        )

    def get(self, job_id: str) -> VideoJob | None:
        row = self._db().execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return VideoJob.from_json(row[0]) if row else None

    def delete(self, job_id: str) -> bool:
        db = self._db()
        db.execute("DELETE FROM leases WHERE id = ?", (job_id,))
        return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def newest(self, limit: int, after: str | None, ascending: bool, owner: Any = ALL) -> tuple[list[VideoJob], bool]:
        """A page of jobs (of `owner` only, unless ALL), oldest or newest first, after the job `after`
        (one of theirs; another id starts from the first)."""
        order = "ASC" if ascending else "DESC"
        where: list[str] = []
        params: list[Any] = []
        if owner is not ALL:
            where.append("owner = ?")
            params.append(owner)
        if after:
            row = (
                self._db()
                .execute(
                    "SELECT created, id FROM jobs WHERE id = ?" + (" AND owner = ?" if owner is not ALL else ""), (after, *params)
                )
                .fetchone()
            )
            if row:
                where.append(f"(created, id) {'>' if ascending else '<'} (?, ?)")
                params += row
        rows = (
            self._db()
            .execute(
                f"SELECT body FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "
                f"ORDER BY created {order}, id {order} LIMIT ?",
                (*params, limit + 1),
            )
            .fetchall()
        )
        return [VideoJob.from_json(r[0]) for r in rows[:limit]], len(rows) > limit

    def unfinished(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT id FROM jobs WHERE finished = 0 ORDER BY created")]

    def prune(self, before: float) -> int:
        """Finished jobs made before `before` (time.time()) removed, with their leases: how many."""
        with self._transaction() as db:
            old = "SELECT id FROM jobs WHERE finished = 1 AND created < ?"
            db.execute(f"DELETE FROM leases WHERE id IN ({old})", (before,))
            return db.execute("DELETE FROM jobs WHERE finished = 1 AND created < ?", (before,)).rowcount

    def claim(self, job_id: str, seconds: float) -> bool:
        return self._take(job_id, seconds, time.time())

    def due(self, chore: str, every: float, now: float) -> bool:
        """Whether `chore` is due at `now` (not done within `every` seconds by any process): if so,
        this process takes it."""
        return self._take(f"chore:{chore}", every, now)

    def _take(self, lease: str, seconds: float, now: float) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT until FROM leases WHERE id = ?", (lease,)).fetchone()
            if row and row[0] > now:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (lease, now + seconds))
            return True

    def let_go(self, job_id: str) -> None:
        self._db().execute("DELETE FROM leases WHERE id = ?", (job_id,))

    def describe(self) -> dict[str, Any]:
        return {"kind": "sqlite", "where": self.path}


class RedisJobs:
    """Jobs in Redis: every instance answers for every job.

    Keys under the prefix: `job:<id>` (the record), `index` (every job by time, a sorted set),
    `owner:<user key id>` (a person's jobs by time), `open` (the unfinished), `lease:<id>`. A
    page is read from one sorted set and its records in one MGET.
    """

    # The ids of a page, after the job ARGV[1] (or from the first): one script, so that a job
    # added between finding `after` and reading on does not shift the page.
    _PAGE = """
        local start = 0
        if ARGV[1] ~= '' then
            local rank = redis.call(ARGV[2] == 'asc' and 'ZRANK' or 'ZREVRANK', KEYS[1], ARGV[1])
            if rank then start = rank + 1 end
        end
        return redis.call(ARGV[2] == 'asc' and 'ZRANGE' or 'ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[3]))
    """
    # A chore due at ARGV[1] is taken until ARGV[2]: a time in the key, not an expiry, so that the
    # clock is the caller's.
    _DUE = """
        local free_at = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tonumber(ARGV[1]) < free_at then return 0 end
        redis.call('SET', KEYS[1], ARGV[2])
        return 1
    """

    def __init__(self, url: str, prefix: str = "siliconflow:videos:"):
        self._redis = redis_client(url)
        self._prefix = prefix
        import redis  # loaded only with REDIS_URL

        self._changed_meanwhile = redis.WatchError
        self._page = self._redis.register_script(self._PAGE)
        self._due = self._redis.register_script(self._DUE)
        self._owners_indexed = False

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def save(self, job: VideoJob) -> None:
        pipe = self._redis.pipeline()
        self._write(pipe, job)
        pipe.execute()

    def update(self, job: VideoJob) -> bool:
        """Save `job` only if its record is still there: False when it was deleted meanwhile."""
        key = self._key("job", job.id)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        return False
                    pipe.multi()
                    self._write(pipe, job)
                    pipe.execute()
                    return True
                except self._changed_meanwhile:
                    continue  # changed between the look and the write: look again

    def _write(self, pipe: Any, job: VideoJob) -> None:
        pipe.set(self._key("job", job.id), job.to_json())
        pipe.zadd(self._key("index"), {job.id: job.created_at})
        if job.owner is not None:
            pipe.zadd(self._key("owner", job.owner), {job.id: job.created_at})
        if job.finished:
            pipe.srem(self._key("open"), job.id)
        else:
            pipe.sadd(self._key("open"), job.id)

    def _forget(self, pipe: Any, job_id: str, owner: str | None) -> None:
        pipe.delete(self._key("job", job_id))
        pipe.zrem(self._key("index"), job_id)
        if owner is not None:
            pipe.zrem(self._key("owner", owner), job_id)
        pipe.srem(self._key("open"), job_id)
        pipe.delete(self._key("lease", job_id))

    def get(self, job_id: str) -> VideoJob | None:
        raw = self._redis.get(self._key("job", job_id))
        return VideoJob.from_json(raw.decode()) if raw else None

    def delete(self, job_id: str) -> bool:
        job = self.get(job_id)
        pipe = self._redis.pipeline()
        self._forget(pipe, job_id, job.owner if job else None)
        return bool(pipe.execute()[0])

    def newest(self, limit: int, after: str | None, ascending: bool, owner: Any = ALL) -> tuple[list[VideoJob], bool]:
        """A page of jobs (of `owner` only, unless ALL), oldest or newest first, after the job `after`
        (one of theirs; another id starts from the first)."""
        if owner is not ALL:
            self._index_owners()
        index = self._key("index") if owner is ALL else self._key("owner", owner)
        ids = [i.decode() for i in self._page(keys=[index], args=[after or "", "asc" if ascending else "desc", limit])]
        raws = self._redis.mget([self._key("job", i) for i in ids[:limit]]) if ids else []
        return [VideoJob.from_json(raw.decode()) for raw in raws if raw], len(ids) > limit

    def _index_owners(self) -> None:
        """Jobs recorded before they were listed by owner go into their owner's index, once."""
        if self._owners_indexed or self._redis.exists(self._key("owners-indexed")):
            self._owners_indexed = True
            return
        ids = [i.decode() for i in self._redis.zrange(self._key("index"), 0, -1)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self._redis.pipeline()
            for raw in self._redis.mget([self._key("job", i) for i in chunk]):
                job = VideoJob.from_json(raw.decode()) if raw else None
                if job is not None and job.owner is not None:
                    pipe.zadd(self._key("owner", job.owner), {job.id: job.created_at})
            pipe.execute()
        self._redis.set(self._key("owners-indexed"), "1")
        self._owners_indexed = True

    def unfinished(self) -> list[str]:
        return sorted(i.decode() for i in self._redis.smembers(self._key("open")))

    def prune(self, before: float) -> int:
        """Finished jobs made before `before` (time.time()) removed, with their index entries and
        leases: how many. Read in pieces; the unfinished among the old are stepped over."""
        removed = skipped = 0
        while True:
            ids = [i.decode() for i in self._redis.zrangebyscore(self._key("index"), "-inf", f"({before}", skipped, 500)]
            if not ids:
                return removed
            pipe = self._redis.pipeline()
            for job_id, raw in zip(ids, self._redis.mget([self._key("job", i) for i in ids]), strict=True):
                job = VideoJob.from_json(raw.decode()) if raw else None
                if job is not None and not job.finished:
                    skipped += 1
                    continue
                self._forget(pipe, job_id, job.owner if job else None)
                removed += job is not None
            pipe.execute()

    def claim(self, job_id: str, seconds: float) -> bool:
        return bool(self._redis.set(self._key("lease", job_id), "1", nx=True, px=int(seconds * 1000)))

    def due(self, chore: str, every: float, now: float) -> bool:
        """Whether `chore` is due at `now` (not done within `every` seconds by any process): if so,
        this process takes it."""
        return bool(self._due(keys=[self._key("chore", chore)], args=[repr(now), repr(now + every)]))

    def let_go(self, job_id: str) -> None:
        self._redis.delete(self._key("lease", job_id))

    def describe(self) -> dict[str, Any]:
        return {"kind": "redis"}


Jobs = SqliteJobs | RedisJobs


# --- submitting -------------------------------------------------------------------------------------


def submit(
    pool: KeyPool,
    send: Callable[[str, dict[str, Any]], str],
    payload: dict[str, Any],
    max_attempts: int,
    maybe_taken: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Submit once: (key, requestId). Keys whose account cannot (dead, broke, limited, forbidden)
    are passed over; a failure that may be the request's is tried `max_attempts` times. A submit
    that succeeded is never repeated, nor one that SiliconFlow may have taken without saying so (no
    answer in time, or one that cannot be read): `maybe_taken(key)` is told, since it may bill the
    job, and the failure says why it was not sent again. Raises UpstreamError."""
    model = str(payload["model"])
    tried: list[str] = []
    last: UpstreamError | None = None
    doubtful = 0
    while doubtful < max_attempts and len(tried) < len(pool) + max_attempts:
        lease = pool.try_acquire(model, exclude=tried).lease
        if lease is None:
            break
        tried.append(lease.key)
        try:
            with pool.using(lease):
                return lease.key, send(lease.key, payload)
        except UpstreamError as exc:
            last = exc
            if exc.kind is Failure.BAD_REQUEST:
                raise
            if exc.kind in (*UNSURE, Failure.BAD_RESPONSE):
                if maybe_taken is not None:
                    maybe_taken(lease.key)
                raise UpstreamError(exc.kind, Reason.of("video_submit_unsure", why=exc.reason), exc.status) from None
            if exc.kind not in KEY_ONLY:
                doubtful += 1
    if last is None:
        raise UpstreamError(Failure.NO_KEYS, pool.outage())
    raise last


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
