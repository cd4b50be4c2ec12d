"""The Flask app: OpenAI-compatible chat completions that draw pictures with SiliconFlow.

`create_app(settings)` builds an app and wires its parts: the key pool and its store, the HTTP
clients, the shared executor, the image store, the model catalog, and the surfaces' blueprints
(site.py, chat.py, responses.py, images.py, videos.py, admin.py). Tests build their own. The
module-level `app` that `gunicorn siliconflow_proxy:app` asks for is made on first access (see
`__getattr__` below), so importing this module never reads `.env` or the environment.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask

from api import admin, chat, errors, images, responses, site, videos
from api.bodies import BodyBudget, release_unanswered
from config import Settings, split_key_entry
from core import metrics
from core.errors import ConfigError, UpstreamError
from core.text import mask_key
from drawing.metering import Spend
from drawing.pipeline import Services
from drawing.video_jobs import VideoSettings, VideoWorker
from siliconflow.client import account_info, image_models, video_models, video_status
from siliconflow.families import ModelCatalog
from siliconflow.keystate import FallbackStore, Limit, Store
from siliconflow.keystate_redis import RedisStore
from siliconflow.keystate_sqlite import LocalStore, MemoryStore
from siliconflow.outbound import AddressRule, make_http, make_session
from siliconflow.pool import KeyPool
from siliconflow.prices import Prices
from siliconflow.upkeep import Upkeep
from storage.keeping import Keeping
from storage.ledger import Ledger, RedisLedger, SqliteLedger
from storage.pictures import Keeper, LocalKeeper, S3Keeper
from storage.upstream_keys import RedisRoster, Roster, SqliteRoster
from storage.user_keys import Day, RedisKeys, SqliteKeys
from storage.video_records import RedisJobs, SqliteJobs
from uploaders import fetch_to_file

log = logging.getLogger("siliconflow_proxy")


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Without `settings`, they are read from the environment (ConfigError if bad)."""
    settings = settings or Settings.from_env()
    _configure_logging(settings.log_level)
    app = Flask(__name__)
    # No MAX_CONTENT_LENGTH: werkzeug's limit silently cuts a chunked body short, so _body() counts.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    pool = KeyPool(
        settings.api_keys,
        _key_store(settings),
        limits=[Limit(count, seconds) for count, seconds in settings.image_rate_limit],
        rest_seconds=settings.rate_limit_rest,
        recheck_seconds=settings.key_recheck_seconds,
        probe_seconds=settings.upstream_timeout + 30,
        roster=_roster(settings),
    )
    if settings.admin_key:
        metrics.setup()  # before the workers fork: they share its directory
    http = make_http(settings.upstream_workers)
    session = make_session(settings.upstream_workers)
    store = _keeper(settings)
    day = Day(settings.quota_utc_offset)
    ledger = _ledger(settings, day)
    app.extensions["siliconflow"] = Services(
        settings=settings,
        pool=pool,
        http=http,
        session=session,
        executor=ThreadPoolExecutor(settings.upstream_workers, thread_name_prefix="upstream"),
        upkeep=Upkeep(
            pool,
            lambda key: account_info(http, settings.api_base_url, key, settings.expansion_timeout),
            settings.key_recheck_seconds,
        ),
        store=store,
        catalog=ModelCatalog(
            settings.models, lambda: _fetch_models(pool, http, settings), refresh=settings.models_refresh_seconds
        ),
        videos=_video_worker(settings, pool, http, session, store),
        users=_user_keys(settings),
        day=day,
        spend=Spend(ledger, Prices(settings.model_prices), pool) if ledger is not None else None,
        keeping=_keeping(settings, store),
    )
    if ledger is not None:
        pool.on_call = ledger.call  # calls (and failures) per upstream key and day, for the operator's page
    # Per worker process: gunicorn forks after this, and each worker counts its own.
    app.extensions["siliconflow.bodies"] = BodyBudget(int(settings.picture_bodies_mb * 2**20))
    for blueprint in (site.bp, chat.bp, responses.bp, images.bp, videos.bp, admin.bp):
        app.register_blueprint(blueprint)
    app.teardown_request(release_unanswered)
    errors.register(app)
    _startup_notes(settings, store, pool)
    return app


def _keeping(settings: Settings, store: Keeper | None) -> Keeping | None:
    """Pictures kept behind links shown at once, spooled where the instance's workers all see them."""
    if store is None or settings.use_lsky_pro:
        return None
    directory = os.path.join(settings.data_directory, "keeping")
    try:
        # A reader waits as long as a keep can take: the download, then the store's two attempts.
        return Keeping(directory, store, wait_seconds=3 * settings.upload_timeout + 5)
    except OSError as exc:
        log.warning("Pictures are kept before their links are shown: cannot write to %s (%s)", directory, exc.strerror)
        return None


def _keeper(settings: Settings) -> Keeper | None:
    """Who keeps the pictures: S3 when S3_BUCKET is set, else the built-in store (on by default).

    A bucket that fails its check at start-up is logged with the variable to fix, and the service
    starts anyway (/health says the store is failing until it works). A store directory named in
    IMAGE_STORE_DIR that cannot be written stops the start; the default place only warns."""
    if settings.s3_bucket:
        keeper = S3Keeper(settings.s3_bucket, settings.s3_prefix, settings.s3_public_base_url, settings.upload_timeout)
        problem = keeper.check()
        if problem is not None:
            log.error("S3 bucket %s at %s cannot be used now: %s", settings.s3_bucket, keeper.endpoint, problem[1])
        return keeper
    directory = settings.store_directory
    if directory is None:
        return None
    try:
        return LocalKeeper(directory, int(settings.image_store_max_mb * 2**20))
    except OSError as exc:
        why = f"cannot create or write to {directory} ({exc.strerror or 'error'})"
        if settings.store_is_default:
            log.warning(
                "Pictures are not kept: %s; set DATA_DIR or IMAGE_STORE_DIR to a writable place, S3_BUCKET, "
                "or IMAGE_STORE_DIR=off to say so",
                why,
            )
            return None
        raise ConfigError(
            f"invalid configuration:\n  IMAGE_STORE_DIR: {why}; give this service's user write access, "
            "or mount a writable volume there"
        ) from None


def _roster(settings: Settings) -> Roster | None:
    """With ADMIN_KEY the operator changes upstream keys while the service runs: a durable roster
    (Redis with REDIS_URL, else a SQLite file in DATA_DIR), seeded from API_KEYS at every start."""
    if not settings.admin_key:
        return None
    roster: Roster
    if settings.redis_url:
        roster = RedisRoster(settings.redis_url)
    else:
        path = os.path.join(settings.data_directory, "upstream_keys.sqlite3")
        try:
            roster = SqliteRoster(path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"invalid configuration:\n  ADMIN_KEY: the upstream keys' file {path} cannot be made ({exc}); "
                "set DATA_DIR to a writable place"
            ) from None
    roster.seed([split_key_entry(entry) for entry in settings.api_keys])
    return roster


def _user_keys(settings: Settings) -> Any:
    """User keys exist only with ADMIN_KEY: in Redis with REDIS_URL, else a SQLite file in DATA_DIR
    (not the throw-away key-state file: they must survive restarts)."""
    if not settings.admin_key:
        return None
    if settings.redis_url:
        return RedisKeys(settings.redis_url)
    path = os.path.join(settings.data_directory, "users.sqlite3")
    try:
        return SqliteKeys(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"invalid configuration:\n  ADMIN_KEY: the user keys' file {path} cannot be made ({exc}); "
            "set DATA_DIR to a writable place"
        ) from None


def _ledger(settings: Settings, day: Day) -> Ledger | None:
    """What was drawn and what it cost, only with ADMIN_KEY (as user keys): in Redis with REDIS_URL,
    else a SQLite file in DATA_DIR, made 0600."""
    if not settings.admin_key:
        return None
    if settings.redis_url:
        return RedisLedger(settings.redis_url, day.today)
    path = os.path.join(settings.data_directory, "ledger.sqlite3")
    try:
        return SqliteLedger(path, day.today)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"invalid configuration:\n  ADMIN_KEY: the ledger's file {path} cannot be made ({exc}); "
            "set DATA_DIR to a writable place"
        ) from None


def _video_worker(settings: Settings, pool: KeyPool, http: Any, session: Any, keeper: Keeper | None) -> VideoWorker | None:
    """Video jobs recorded in Redis when REDIS_URL is set (every instance answers for every job),
    else in a SQLite file in the data directory (this instance's workers, and the next process)."""
    if settings.redis_url:
        jobs: Any = RedisJobs(settings.redis_url)
    else:
        path = os.path.join(settings.data_directory, "videos.sqlite3")
        try:
            jobs = SqliteJobs(path)
        except (OSError, sqlite3.Error) as exc:
            log.warning("Videos are off: their record %s cannot be made (%s); set DATA_DIR to a writable place", path, exc)
            return None
    rule = AddressRule.trusting(settings.api_base_url, allow_private=settings.allow_private_image_urls)
    max_bytes = int(settings.max_video_mb * 2**20)
    return VideoWorker(
        jobs,
        pool,
        lambda key, request_id: video_status(http, settings.api_base_url, key, request_id, settings.expansion_timeout),
        lambda url, sink: fetch_to_file(session, url, sink, settings.upstream_timeout, max_bytes, rule),
        keeper,
        VideoSettings(
            settings.video_poll_seconds,
            settings.video_timeout,
            max_bytes,
            retention_seconds=settings.video_retention_days * 86400.0,
        ),
    )


def _fetch_models(pool: KeyPool, http: Any, settings: Settings) -> list[str]:
    """SiliconFlow's image models now, asked with any usable key (raises when none, or no answer)."""
    key = pool.peek_key()
    if key is None:
        raise LookupError("no usable key")
    timeout = min(settings.expansion_timeout, 10.0)
    pictures = image_models(http, settings.api_base_url, key, timeout)
    try:
        moving = video_models(http, settings.api_base_url, key, timeout)
    except UpstreamError:
        moving = []  # a list of pictures without videos is still a list
    return pictures + moving


def _key_store(settings: Settings) -> Store:
    """Redis when REDIS_URL is set (with this instance's local store while it cannot be reached),
    else a local store (with this process's memory while its file fails). Made here, before gunicorn
    forks, so that every worker shares it."""
    local = FallbackStore(LocalStore(), MemoryStore())
    atexit.register(local.remove)
    if not settings.redis_url:
        return local
    return FallbackStore(RedisStore(settings.redis_url), local)


def _configure_logging(level: str) -> None:
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def _startup_notes(settings: Settings, keeper: Keeper | None, pool: KeyPool) -> None:
    if not settings.api_key and not settings.admin_key:
        log.warning("API_KEY is not set: this service is open to anyone who can reach it.")
    elif not settings.api_key:
        log.info("API_KEY is not set: clients need a user key made on the operator's page (ADMIN_KEY is set).")
    entries = pool.entries()
    if not entries:
        where = "API_KEYS or the operator's page" if settings.admin_key else "API_KEYS"
        log.warning("No upstream keys: /health answers, but drawing answers 503 until keys are added (%s).", where)
    else:
        log.info(
            "%d upstream key(s): %s",
            len(entries),
            ", ".join(f"{entry.account}/{mask_key(entry.key)}" if entry.account else mask_key(entry.key) for _, entry in entries),
        )
    limits = ", ".join(f"{count}/{seconds:g}s" for count, seconds in settings.image_rate_limit)
    log.info(
        "Image calls per account and model: %s; keys are shared by %s.",
        limits or f"learned from 429s (an account rests {settings.rate_limit_rest:g}s after one)",
        "Redis" if settings.redis_url else "this instance's workers",
    )
    hosts = ["Lsky Pro"] if settings.use_lsky_pro else []
    if keeper is not None:
        where = keeper.describe()["where"]
        hosts.append(f"S3 ({where})" if keeper.kind == "s3" else f"the built-in store ({where})")
    log.info("Images are kept by: %s.", " then ".join(hosts) if hosts else "nobody (upstream links expire in 1 hour)")


def _app_from_environment() -> Flask:
    from dotenv import find_dotenv, load_dotenv

    # A .env in the working directory (or above it) first, then the one beside this file.
    # Variables already set in the environment win over both.
    load_dotenv(find_dotenv(usecwd=True) or Path(__file__).with_name(".env"))
    try:
        return create_app()
    except ConfigError as exc:
        # One clear message instead of a traceback; gunicorn then stops with "Worker failed to boot".
        print(f"siliconflow_proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


_app: Flask | None = None


def __getattr__(name: str) -> Any:
    """`siliconflow_proxy.app`, built on first access, for `gunicorn siliconflow_proxy:app`."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = _app_from_environment()
    return _app


if __name__ == "__main__":
    application = _app_from_environment()
    # Development server; deployments run gunicorn as the Procfile does.
    application.run(host="0.0.0.0", port=application.extensions["siliconflow"].settings.port, threaded=True)
