# trio_esper in a container (docs/container.md):
#
#   docker build -t trio-esper .
#   docker run -p 3000:3000 -v esper-data:/data -e ESPER_PUBLISHER_SECRET=... trio-esper
#
# Settings are ESPER_* variables (trio-esper --help lists them); flags after the
# image name are passed to trio-esper. Change the port with -e ESPER_PORT, not
# --port: the health check reads ESPER_PORT.

# A tag, not a digest: 3.12-slim receives Debian and CPython security fixes on
# every rebuild, and constraints.txt pins the libraries. Pin a digest
# (python:3.12-slim@sha256:...) for builds that must be reproducible. CI runs the
# tests on this Python series too (noxfile.py's SUPPORTED_PYTHONS, tests_all).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Only what the package build reads (pyproject.toml names README.md as its readme),
# and constraints.txt: the exact release of every dependency that CI tested.
COPY pyproject.toml README.md constraints.txt /src/
COPY trio_esper /src/trio_esper
RUN pip install --no-cache-dir -c /src/constraints.txt /src \
    && rm -rf /src

# A fixed uid and gid, so files in a mounted /data and a runAsNonRoot policy
# can name them; no home, no login shell.
RUN groupadd --system --gid 10001 esper \
    && useradd --system --uid 10001 --gid esper --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin esper \
    && mkdir /data \
    && chown esper:esper /data

# Defaults as variables rather than flags: flags given to `docker run` replace
# CMD, and a replaced CMD must not lose the bind address (the default,
# 127.0.0.1, is unreachable from outside a container). SQLite history in
# /data lets subscribers resume across container restarts.
ENV ESPER_BIND=0.0.0.0 \
    ESPER_PORT=3000 \
    ESPER_HISTORY=sqlite:/data/history.db

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 3000
# SIGTERM starts a graceful shutdown: open streams get ESPER_SHUTDOWN_GRACE_SECONDS
# (default 5) to end, inside `docker stop`'s 10 s before it kills.
STOPSIGNAL SIGTERM

# No curl in slim images: Python's urllib. Exit 0 on a 2xx from /health, 1
# otherwise (refused, timed out, an error status).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "trio_esper.healthcheck"]

ENTRYPOINT ["trio-esper"]
# Extra flags: `docker run ... trio-esper --log-level debug` puts them here.
CMD []
