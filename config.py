"""Settings: one frozen dataclass, built once from the environment and validated up front.

`Settings.from_env` collects every bad variable before raising, so a deployer fixes their
`.env` in one go instead of one restart per typo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from core.errors import ConfigError
from siliconflow.families import DEFAULT_ALIASES, parse_aliases
from siliconflow.prices import parse_prices

DEFAULT_BANNED_KEYWORDS = "porn,nude,naked,sex,xxx,adult"


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


# An upstream key as the operator writes it: `sk-…`, or `NAME/sk-…` where keys with the same NAME
# share one SiliconFlow account (its rate budget). Only the operator knows which keys share one:
# SiliconFlow stopped telling (/v1/user/info answers 410).
ACCOUNT_NAME = re.compile(r"[^\s/,]{1,64}")
_KEY = re.compile(r"[^\s/,]{4,512}")


def split_key_entry(entry: str) -> tuple[str | None, str]:
    """(account NAME or None, key) of one entry already checked by `key_entries`."""
    name, _, key = entry.rpartition("/")
    return name or None, key


def key_entries(raw: str, *, what: str = "entry") -> tuple[str, ...]:
    """Keys separated by commas, spaces or lines (as pasted from a forum post), each `sk-…` or
    `NAME/sk-…`. Raises ValueError naming the malformed ones by position, never showing a key."""
    entries, bad = [], []
    for number, entry in enumerate((piece for piece in re.split(r"[\s,]+", raw) if piece), 1):
        name, slash, key = entry.partition("/")
        if slash:
            ok = bool(ACCOUNT_NAME.fullmatch(name)) and bool(_KEY.fullmatch(key))
        else:
            name, key, ok = "", entry, bool(_KEY.fullmatch(entry))
        if not ok:
            bad.append(str(number))
        else:
            entries.append(f"{name}/{key}" if name else key)
    if bad:
        raise ValueError(
            f"{what} {', '.join(bad)} (counting from 1) {'is' if len(bad) == 1 else 'are'} not a key or NAME/key: "
            "a key has no spaces, commas or slashes; a NAME is at most 64 characters, without them either"
        )
    return tuple(dict.fromkeys(entries))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def _number_of(unit: str, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of {unit}") from None
        if not 0 < value <= high:
            raise ValueError(f"expected a number of {unit} above 0 and at most {high:g}")
        return value

    return parse


_seconds = _number_of("seconds", 3600)
_megabytes = _number_of("megabytes", 200)
_store_megabytes = _number_of("megabytes", 10_000_000)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return value


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _optional_url(raw: str) -> str | None:
    return _url(raw) if raw.strip() else None


_OFF = ("off", "none", "false", "no", "0")


def _store_dir(raw: str) -> str | None:
    """A directory; empty: the default (`<DATA_DIR>/images`); `off`: nothing kept on disk."""
    value = raw.strip()
    return None if value.lower() in _OFF else value


def _s3_prefix(raw: str) -> str:
    """Keys start with this: `pictures/` from `pictures`, `/pictures/` or `pictures/`."""
    value = raw.strip().strip("/")
    return f"{value}/" if value else ""


def _admin_key(raw: str) -> str | None:
    value = raw.strip()
    if value and len(value) < 16:
        raise ValueError("must be at least 16 characters (it guards every user key)")
    return value or None


def _utc_offset(raw: str) -> int:
    """`+08:00`, `-5`, `0`: minutes east of UTC."""
    match = re.fullmatch(r"\s*([+-]?)(\d{1,2})(?::?(\d{2}))?\s*", raw)
    if not match or int(match[2]) > 14 or int(match[3] or 0) >= 60:
        raise ValueError("expected an offset from UTC such as +08:00, -05:00 or 0")
    minutes = int(match[2]) * 60 + int(match[3] or 0)
    return -minutes if match[1] == "-" else minutes


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """HuggingFace Spaces mount their persistent storage at /data (a Space has SPACE_ID set);
    anywhere else a `data` directory under the working directory."""
    environ = os.environ if environ is None else environ
    if environ.get("SPACE_ID") and os.path.isdir("/data") and os.access("/data", os.W_OK):
        return "/data"
    return os.path.abspath("data")


def _optional_int(raw: str) -> int | None:
    return _int_between(1, 10**9)(raw) if raw.strip() else None


_PERIOD_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _rate_limits(raw: str) -> tuple[tuple[int, float], ...]:
    """`2/60s`, `10/1m`, `2/60s,400/1d`: (count, seconds) pairs. Empty or `off`: none (learned from 429s)."""
    value = raw.strip().lower()
    if value in ("", "off", "none", "learn"):
        return ()
    limits = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", part)
        if not match or int(match[1]) < 1 or float(match[2]) <= 0:
            raise ValueError("expected N/PERIOD like 2/60s, 10/1m or 2/60s,400/1d (s, m, h or d), or off")
        limits.append((int(match[1]), float(match[2]) * _PERIOD_UNITS[match[3]]))
    return tuple(limits)


def _optional_redis_url(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError("expected redis://[:password@]host:port/db, rediss://… or unix:///path/to/socket")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError("the port is not a number") from None
    return value


def _models(raw: str) -> tuple[str, ...] | None:
    """None: offer the image models SiliconFlow lists."""
    return _split_list(raw) or None


def _setting(env: str, default: str, parse: Callable[[str], Any], *, secret: bool = False) -> Any:
    return field(metadata={"env": env, "default": default, "parse": parse}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment. Secrets stay out of `repr`."""

    port: int = _setting("PORT", "7860", _int_between(1, 65535))
    api_key: str | None = _setting("API_KEY", "", _optional_text, secret=True)
    api_keys: tuple[str, ...] = _setting("API_KEYS", "", key_entries, secret=True)  # `sk-…` or `NAME/sk-…`
    max_images_per_request: int = _setting("MAX_IMAGES_PER_REQUEST", "4", _int_between(1, 16))
    image_prompt_model: str = _setting("IMAGE_PROMPT_MODEL", "Qwen/Qwen2.5-7B-Instruct", _text)
    api_base_url: str = _setting("API_BASE_URL", "https://api.siliconflow.cn", _url)
    prompt_expansion: bool = _setting("PROMPT_EXPANSION", "true", _bool)
    use_lsky_pro: bool = _setting("USE_LSKY_PRO", "false", _bool)
    lsky_pro_url: str | None = _setting("LSKY_PRO_URL", "", _optional_url)
    lsky_pro_token: str | None = _setting("LSKY_PRO_TOKEN", "", _optional_text, secret=True)
    lsky_strategy_id: int | None = _setting("LSKY_STRATEGY_ID", "", _optional_int)
    use_shortlink: bool = _setting("USE_SHORTLINK", "false", _bool)
    shortlink_base_url: str | None = _setting("SHORTLINK_BASE_URL", "", _optional_url)
    shortlink_api_key: str | None = _setting("SHORTLINK_API_KEY", "", _optional_text, secret=True)
    data_dir: str | None = _setting("DATA_DIR", "", _optional_text)
    image_store_dir: str | None = _setting("IMAGE_STORE_DIR", "", _store_dir)
    image_store_max_mb: float = _setting("IMAGE_STORE_MAX_MB", "2048", _store_megabytes)
    s3_bucket: str | None = _setting("S3_BUCKET", "", _optional_text)
    s3_prefix: str = _setting("S3_PREFIX", "", _s3_prefix)
    s3_public_base_url: str | None = _setting("S3_PUBLIC_BASE_URL", "", _optional_url)
    public_base_url: str | None = _setting("PUBLIC_BASE_URL", "", _optional_url)
    upload_timeout: float = _setting("UPLOAD_TIMEOUT", "30", _seconds)
    max_image_mb: float = _setting("MAX_IMAGE_MB", "20", _megabytes)
    allow_private_image_urls: bool = _setting("ALLOW_PRIVATE_IMAGE_URLS", "false", _bool)
    banned_keywords: tuple[str, ...] = _setting(
        "BANNED_KEYWORDS", DEFAULT_BANNED_KEYWORDS, lambda raw: tuple(k.lower() for k in _split_list(raw))
    )
    models: tuple[str, ...] | None = _setting("MODELS", "", _models)
    model_aliases: tuple[tuple[str, str], ...] = _setting("MODEL_ALIASES", "", parse_aliases)
    models_refresh_seconds: float = _setting("MODELS_REFRESH_SECONDS", "3600", _number_of("seconds", 86400))
    upstream_timeout: float = _setting("UPSTREAM_TIMEOUT", "120", _seconds)
    expansion_timeout: float = _setting("EXPANSION_TIMEOUT", "20", _seconds)
    request_timeout: float = _setting("REQUEST_TIMEOUT", "300", _seconds)
    max_key_attempts: int = _setting("MAX_KEY_ATTEMPTS", "3", _int_between(1, 20))
    image_rate_limit: tuple[tuple[int, float], ...] = _setting("IMAGE_RATE_LIMIT", "", _rate_limits)
    rate_limit_rest: float = _setting("RATE_LIMIT_REST", "60", _seconds)
    redis_url: str | None = _setting("REDIS_URL", "", _optional_redis_url, secret=True)
    key_recheck_seconds: float = _setting("KEY_RECHECK_SECONDS", "600", _seconds)
    heartbeat_seconds: float = _setting("HEARTBEAT_SECONDS", "10", _seconds)
    client_body_timeout: float = _setting("CLIENT_BODY_TIMEOUT", "30", _seconds)
    upstream_workers: int = _setting("UPSTREAM_WORKERS", "1024", _int_between(1, 4096))
    picture_bodies_mb: float = _setting("PICTURE_BODIES_MB", "100", _number_of("megabytes", 100_000))
    admin_key: str | None = _setting("ADMIN_KEY", "", _admin_key, secret=True)
    quota_utc_offset: int = _setting("QUOTA_UTC_OFFSET", "+08:00", _utc_offset)
    model_prices: tuple[tuple[str, float], ...] = _setting("MODEL_PRICES", "", parse_prices)
    video_timeout: float = _setting("VIDEO_TIMEOUT", "1800", _number_of("seconds", 86400))
    video_poll_seconds: float = _setting("VIDEO_POLL_SECONDS", "5", _number_of("seconds", 600))
    max_video_mb: float = _setting("MAX_VIDEO_MB", "200", _number_of("megabytes", 10_000))
    video_retention_days: int = _setting("VIDEO_RETENTION_DAYS", "30", _int_between(1, 3650))
    cors_origins: tuple[str, ...] = _setting("CORS_ORIGINS", "*", _split_list)
    log_level: str = _setting("LOG_LEVEL", "INFO", lambda raw: _choice(raw.upper(), _LOG_LEVELS))

    @property
    def data_directory(self) -> str:
        """Where the service keeps what must outlive a restart (DATA_DIR, else the platform's place)."""
        return self.data_dir or default_data_dir()

    @property
    def store_directory(self) -> str | None:
        """The built-in store's directory, None when it is off; S3, when set, keeps pictures instead."""
        if self.image_store_dir is None:
            return None
        return self.image_store_dir or os.path.join(self.data_directory, "images")

    @property
    def store_is_default(self) -> bool:
        """The built-in store was not asked for by name: a place that fails is a warning, not a stop."""
        return self.image_store_dir == ""

    @property
    def aliases(self) -> dict[str, str]:
        """MODEL_ALIASES in effect: OpenAI's model names (and any the operator adds) -> the model drawn."""
        return dict(self.model_aliases)

    @property
    def upstream_keys(self) -> tuple[str, ...]:
        """The keys of API_KEYS, without their account names."""
        return tuple(split_key_entry(entry)[1] for entry in self.api_keys)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret configured: what must never be repeated to anyone."""
        values = (*self.upstream_keys, self.api_key, self.admin_key, self.lsky_pro_token, self.shortlink_api_key, self.redis_url)
        if self.s3_bucket:  # boto3 reads it from the environment itself
            values = (*values, os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"))
        return tuple(value for value in values if value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `environ` (default `os.environ`), then apply `overrides`.

        Raises ConfigError naming every variable whose value cannot be used.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            meta = f.metadata
            raw = environ.get(meta["env"])
            if raw is None or (raw.strip() == "" and meta["default"] != ""):
                raw = meta["default"]
            try:
                values[f.name] = meta["parse"](raw)
            except ValueError as exc:
                problems.append(f"{meta['env']}: {exc}")
        values.update(overrides)
        if not problems:
            problems = _missing_companions(values)
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _missing_companions(values: dict[str, Any]) -> list[str]:
    """Features switched on without what they need."""
    problems = []
    if values["use_lsky_pro"]:
        for name, env in (("lsky_pro_url", "LSKY_PRO_URL"), ("lsky_pro_token", "LSKY_PRO_TOKEN")):
            if not values[name]:
                problems.append(f"{env}: required when USE_LSKY_PRO=true")
    if values["use_shortlink"]:
        if not values["shortlink_base_url"]:
            problems.append("SHORTLINK_BASE_URL: required when USE_SHORTLINK=true")
        # Sink refuses site tokens shorter than 8 characters.
        if len(values["shortlink_api_key"] or "") < 8:
            problems.append("SHORTLINK_API_KEY: required when USE_SHORTLINK=true, at least 8 characters")
    if values["models"]:
        # An alias the operator wrote must name a model MODELS offers (a built-in one that does not
        # is answered, when asked for, with a 400 naming it).
        for name, model in values["model_aliases"]:
            if DEFAULT_ALIASES.get(name) != model and model not in values["models"]:
                problems.append(f"MODEL_ALIASES: {name}={model} names a model that MODELS does not offer")
    return problems


def _choice(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError("expected one of " + ", ".join(allowed))
    return value


def env_table() -> list[tuple[str, str]]:
    """(variable, default) for every setting, in declaration order. Used to check the docs."""
    return [(f.metadata["env"], f.metadata["default"]) for f in fields(Settings)]
