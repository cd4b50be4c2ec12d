"""gunicorn settings shared by the Procfile and the Dockerfile (gunicorn reads this file itself).

gthread: each open stream holds one thread while it waits on SiliconFlow, so threads, not
processes, set how many streams a worker carries at once.
"""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
worker_class = "gthread"
# gthread workers report alive from their main loop, so a long stream does not trip this; kept
# above the upstream timeout all the same, for worker classes that count request time.
timeout = int(float(os.environ.get("UPSTREAM_TIMEOUT", "120"))) + 60
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
# Load the app once in the master: a bad setting then stops start-up with its message instead
# of workers failing one after another, and the workers share the loaded code.
preload_app = True
