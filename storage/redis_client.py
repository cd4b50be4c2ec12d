"""One way to reach Redis for every store that keeps state there (REDIS_URL): a client over a
bounded, blocking connection pool, so that a thousand greenlets share a few dozen connections
instead of opening a thousand, with short timeouts so that an unreachable Redis costs a request
a fraction of a second, not a minute."""

from __future__ import annotations

from typing import Any

MAX_CONNECTIONS = 64  # per process and store


def redis_client(url: str, *, socket_timeout: float = 5.0) -> Any:
    """A client for the Redis at `url`. Every store that keeps state in Redis makes its own (each
    with its own bounded pool) through this one function."""
    import redis  # only deployments with REDIS_URL load the client

    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=2,  # a greenlet waits this long for a free connection, then the call fails
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool, decode_responses=False)
