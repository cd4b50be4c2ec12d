"""Video jobs' durable records: what each job is, whose it is and where it stands, in a SQLite file
in the service's data directory (this instance's workers, and the next process after a restart) or
in Redis (every instance). Both index jobs by owner, so a person's list reads their page only, and
hold the leases that give each unfinished job one poller at a time (drawing/video_jobs.py)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from storage.redis_client import redis_client
from storage.sqlite_file import SqliteFile

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
FINISHED = (COMPLETED, FAILED)
ALL = object()  # every owner's jobs (the operator's key)


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


def submitted(
    model: str,
    sent: dict[str, Any],
    seconds: str,
    key_id: str,
    upstream_id: str,
    owner: str | None,
    notes: tuple[str, ...] = (),
) -> VideoJob:
    """The record of a job SiliconFlow has just taken: the one way a job is made (chat and the Videos
    API alike). `sent` is the body submitted; `key_id` the pool's id of the key whose account polls it."""
    return VideoJob(
        new_id(),
        model,
        str(sent.get("prompt", "")),
        str(sent.get("image_size", "")),
        seconds,
        int(time.time()),
        key_id=key_id,
        upstream_id=upstream_id,
        seed=sent.get("seed"),
        negative_prompt=sent.get("negative_prompt"),
        has_input="image" in sent,
        notes=list(notes),
        owner=owner,
    )


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
        self._file = SqliteFile(path)
        self._db = self._file.db
        db = self._db()
        db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, finished INTEGER, body TEXT, owner TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, until REAL)")
        with self._file.transaction() as db:  # one process adds the column, the others then see it
            if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                # A file written before jobs were listed by owner: the column is filled from the records.
                db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
                db.execute("UPDATE jobs SET owner = json_extract(body, '$.owner')")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created, id)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created, id)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (finished, created)")

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
        with self._file.transaction() as db:
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
        with self._file.transaction() as db:
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


class Jobs(Protocol):
    """What the video worker and the surfaces ask of a job store (SqliteJobs, RedisJobs)."""

    def save(self, job: VideoJob) -> None: ...

    def get(self, job_id: str) -> VideoJob | None: ...

    def delete(self, job_id: str) -> bool: ...

    def unfinished(self) -> list[str]: ...

    def claim(self, job_id: str, seconds: float) -> bool: ...

    def let_go(self, job_id: str) -> None: ...

    def describe(self) -> dict[str, Any]: ...
