#!/bin/sh
# Build the kvd image on a machine without an image registry; `make docker-image` runs this.
#
#   1. the base image (docker/build-base.sh: debootstrap + docker import; reused once built),
#   2. kvd and its dependencies as wheels for the base's Python, into docker/wheels
#      (on the host, whose pip reaches PyPI; `docker build` then installs offline),
#   3. docker build.
#
# Environment (all optional):
#   KVD_IMAGE       the image to build        (default kvd:latest)
#   KVD_BASE_IMAGE  the base image            (default kvd-base:bookworm; with another base,
#                                               e.g. python:3.11-slim, step 1 is skipped)
#   PYTHON          the host Python with pip  (default .venv/bin/python, else python3)
set -eu
cd "$(dirname "$0")/.."

IMAGE=${KVD_IMAGE:-kvd:latest}
BASE=${KVD_BASE_IMAGE:-kvd-base:bookworm}
WHEELS=docker/wheels
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! docker info >/dev/null 2>&1; then
    echo "build-image: the Docker engine is not reachable (docker info failed)" >&2
    exit 1
fi

start=$(date +%s)
case "$BASE" in
    kvd-base:*) KVD_BASE_IMAGE=$BASE docker/build-base.sh ;;
    *) docker image inspect "$BASE" >/dev/null 2>&1 || docker pull "$BASE" ;;
esac

# One build at a time per checkout: the wheels directory is shared.
mkdir -p "$WHEELS"
exec 9>"$WHEELS/.lock"
command -v flock >/dev/null 2>&1 && flock 9

# kvd as a wheel, built on the host; its dependencies downloaded by the base's own Python and
# pip, in a throwaway container, so environment markers (python_full_version etc.) are judged
# by the Python that will run them.  The host's CA bundle is lent to that container read-only:
# a network that intercepts TLS is then trusted there as on the host.  Nothing of it reaches
# the image, which installs from docker/wheels with --no-index.
echo "build-image: kvd and its dependencies as wheels into $WHEELS"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/kvd-*.whl
# Built from a clean copy (setuptools writes build/ and *.egg-info into the tree it builds), with a
# fixed SOURCE_DATE_EPOCH so that the wheel is reproducible and unchanged sources hit the build cache.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT INT TERM
tar -cf - --exclude=./.git --exclude=./.venv --exclude=./.kvd --exclude=./build --exclude=./dist \
    --exclude=./docker/wheels --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache . | tar -C "$SRC" -xf -
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "$SRC" >/dev/null
CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
set -- --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
    -v "$(pwd)/$WHEELS:/wheels" --entrypoint sh
if [ -f "$CA" ]; then
    set -- "$@" -v "$CA:/tmp/host-ca.crt:ro" -e PIP_CERT=/tmp/host-ca.crt
fi
# pip: the base's own, or Debian's bundled wheel (python3-venv ships it) run directly.
docker run "$@" "$BASE" -c '
    if python3 -m pip --version >/dev/null 2>&1; then pip="python3 -m pip"
    else pip="python3 $(ls /usr/share/python-wheels/pip-*.whl | tail -1)/pip"; fi
    $pip download -q --no-index --find-links /wheels --only-binary=:all: -d /tmp/check /wheels/kvd-*.whl 2>/dev/null ||
    $pip download -q --only-binary=:all: -d /wheels /wheels/kvd-*.whl'

echo "build-image: docker build -t $IMAGE (BASE=$BASE)"
# The build stage is tagged too (<image>-build), so that it stays as the cache of the next
# build while the untagged leftovers of earlier builds (and only those: they carry this
# Dockerfile's label) are pruned.
LOG=$(mktemp)
if ! DOCKER_BUILDKIT=0 docker build --force-rm --build-arg BASE="$BASE" --target build -t "$IMAGE-build" . >"$LOG" 2>&1 ||
   ! DOCKER_BUILDKIT=0 docker build --force-rm --build-arg BASE="$BASE" -t "$IMAGE" . >>"$LOG" 2>&1; then
    tail -40 "$LOG" >&2
    rm -f "$LOG"
    exit 1
fi
rm -f "$LOG"
docker image prune -f --filter label=kvd.image >/dev/null
flock -u 9 2>/dev/null || true
echo "build-image: $IMAGE built in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
