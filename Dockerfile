# kvd: one node of the replicated key/value store.
#
# On this machine (no registry): `make docker-image` builds the local Debian base
# (docker/build-base.sh), puts kvd and its dependencies as wheels into
# docker/wheels, and builds this file offline.  docker/wheels is optional: a plain
# `docker build .` of a fresh clone installs the dependencies from PyPI instead, on
# any Python 3.9+ image with venv (the default base, once built, or an official one):
#
#   docker build -t kvd .
#   docker build --build-arg BASE=python:3.11-slim -t kvd .
#
#   docker run -d -p 7001:7001 -v kvd-data:/data kvd --initial-cluster <this node's --listen>,...
#
# The node runs as `twistd --nodaemon kvd` (PID 1, as user kvd), keeps its data in
# the /data volume, stops gracefully on SIGTERM, and its HEALTHCHECK says whether it
# can serve (a live leader, applied lag <= 1000: its HTTP /v1/health).
ARG BASE=kvd-base:bookworm

FROM ${BASE} AS build
LABEL kvd.image=build
# Only what the install needs, so that edits elsewhere (Makefile, docs) keep the cache.
COPY setup.py README.md mgmt.py /src/
COPY twisted /src/twisted
COPY kvd /src/kvd
# docker/ whole: entrypoint.sh, healthcheck.py, and docker/wheels if `make docker-image` made it
# (a fresh clone has none: COPY of a missing path fails, so it is not named on its own).
COPY docker /src/docker
RUN set -eu; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1; \
    python3 -m venv /opt/kvd; \
    if ls /src/docker/wheels/kvd-*.whl >/dev/null 2>&1; then \
        echo "kvd: installing offline from docker/wheels"; \
        /opt/kvd/bin/pip install --no-index --find-links /src/docker/wheels kvd; \
    else \
        echo "kvd: no docker/wheels; installing the dependencies from PyPI"; \
        /opt/kvd/bin/pip install /src; \
    fi; \
    /opt/kvd/bin/pip uninstall -y -q pip setuptools wheel 2>/dev/null || true; \
    find /opt/kvd/lib -type d -path '*/site-packages/twisted/*' -name test -prune -exec rm -rf {} +; \
    /opt/kvd/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"; \
    /opt/kvd/bin/twistd kvd --help >/dev/null; \
    install -m 0755 /src/docker/entrypoint.sh /opt/kvd/bin/kvd-entrypoint; \
    install -m 0755 /src/docker/healthcheck.py /opt/kvd/bin/kvd-healthcheck; \
    sed -i '1i #!/opt/kvd/bin/python' /opt/kvd/bin/kvd-healthcheck

FROM ${BASE}
LABEL kvd.image=node org.opencontainers.image.title=kvd \
      org.opencontainers.image.description="A replicated key/value store on Raft and Twisted, speaking Redis"
RUN set -eu; \
    groupadd --gid 10001 kvd; \
    useradd --uid 10001 --gid kvd --home-dir /data --no-create-home --shell /usr/sbin/nologin kvd; \
    mkdir -p /data /certs; \
    chown kvd:kvd /data /certs; \
    chmod 0700 /certs
COPY --from=build /opt/kvd /opt/kvd
ENV PATH=/opt/kvd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
VOLUME /data
WORKDIR /data
USER kvd
EXPOSE 7001 17001 27001 27001/udp 37001
STOPSIGNAL SIGTERM
# Healthy = can serve: a live leader and applied lag <= 1000 (GET /v1/health on the HTTP port,
# else INFO raft on the client port).  A node in a minority, alone, or never bootstrapped is
# unhealthy; the start period covers a cluster's first election (and a `docker run` waiting for
# its peers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["kvd-healthcheck"]
ENTRYPOINT ["kvd-entrypoint"]
