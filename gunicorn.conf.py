"""gunicorn settings shared by the Procfile and the Dockerfile (gunicorn reads this file itself).

Each open stream mostly waits on SiliconFlow. gevent holds hundreds of such waits per process on
greenlets: in bench/ 500 concurrent streams finished with p99 2.0 s under gevent against 3.3 s
under gthread with 256 threads, at 3.1 ms against 4.1 ms CPU per request. gthread stays available
(GUNICORN_WORKER_CLASS=gthread) for platforms where gevent cannot be installed.
"""

import os

worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
if worker_class == "gevent":
    # Patch before the app (and requests, urllib3, ssl) is imported: preload_app imports it in
    # this process right after reading this file.
    from gevent import monkey

    monkey.patch_all()


def _large_allocations_go_back() -> None:
    """glibc raises its mmap threshold up to 32 MB after freeing a large block, so an edit's tens of
    MB of pictures then come from the heap and stay in the worker after it (a worker kept 803 MB
    of a 1.5 GB peak). Fixed at 1 MB, every such block is mapped and unmapped: given back when freed.
    Set in the master, before it forks; a libc without mallopt (musl) is left as it is."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_large_allocations_go_back()
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))  # gevent: streams per worker
threads = int(os.environ.get("GUNICORN_THREADS", "64"))  # gthread: streams per worker
# gevent and gthread workers report alive from their own loop, so a long stream does not trip
# this; kept above the upstream timeout all the same, for worker classes that count request time.
timeout = int(float(os.environ.get("UPSTREAM_TIMEOUT", "120"))) + 60
# After SIGTERM (a deploy, a restart, `docker stop`), streams get as long as one image may take to
# finish; those still running then end themselves with a line saying so and [DONE], a few seconds
# before this runs out (drawing.Shutdown). Platforms that kill sooner (Heroku: 30 s, docker stop:
# 10 s) should say so: GUNICORN_CMD_ARGS="--graceful-timeout 28".
graceful_timeout = int(float(os.environ.get("UPSTREAM_TIMEOUT", "120"))) + 15
keepalive = 5
accesslog = "-"
errorlog = "-"
# Load the app once in the master: a bad setting then stops start-up with its message instead
# of workers failing one after another, and the workers share the loaded code.
preload_app = True


def post_worker_init(worker):
    """Learn the keys' accounts as the worker boots, not at its first request; and tell the streams
    of this worker when gunicorn asks it to stop, and how long they have."""
    import signal

    from drawing.pipeline import SHUTDOWN

    services = worker.wsgi.extensions["siliconflow"]
    services.upkeep.ensure_running()
    if services.videos is not None:
        services.videos.ensure_running()  # jobs left by a process that stopped mid-job go on here

    stop = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        SHUTDOWN.begin(worker.cfg.graceful_timeout)
        if callable(stop):
            stop(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server, worker):
    """The worker's own threads end before it does: none logs into a closing process."""
    services = getattr(worker.wsgi, "extensions", {}).get("siliconflow")
    if services is not None:
        services.close()


def child_exit(server, worker):
    """A worker that ended: its share of the Prometheus gauges goes (metrics.py, multiprocess)."""
    from core import metrics

    metrics.worker_gone(worker.pid)
