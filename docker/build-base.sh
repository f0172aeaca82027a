#!/bin/sh
# Build the local base image for kvd from Debian packages, with no registry:
# debootstrap a minimal Debian root with Python 3 and import it into Docker.
#
#   docker/build-base.sh            # reuse the image if it exists, else build it
#   docker/build-base.sh --force    # rebuild it anyway
#
# Environment (all optional):
#   KVD_BASE_IMAGE  image to create        (default kvd-base:bookworm)
#   DEBIAN_SUITE    Debian release         (default bookworm; Python 3.11)
#   DEBIAN_MIRROR   Debian mirror          (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY security mirror        (default http://deb.debian.org/debian-security)
#   KVD_BASE_HOST_CA 1: the CA certificates this host's admin added (/usr/local/share/
#                   ca-certificates/*.crt, e.g. a TLS-intercepting proxy's) are added to the
#                   base's trust store too, so that pip in `docker build` reaches PyPI through
#                   the same network as the host; 0 leaves them out   (default 1)
#
# Needs root (debootstrap, chroot) and the debootstrap package (installed here with
# apt-get when it is missing and we are root).  Elsewhere, skip this script and build
# on an official image instead:
#   docker build --build-arg BASE=python:3.11-slim -t kvd .
set -eu

IMAGE=${KVD_BASE_IMAGE:-kvd-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
HOST_CA=${KVD_BASE_HOST_CA:-1}
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

have_image() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

if [ "$FORCE" = 0 ] && have_image; then
    echo "build-base: $IMAGE exists; reusing it (--force rebuilds)"
    exit 0
fi

if ! docker info >/dev/null 2>&1; then
    echo "build-base: the Docker engine is not reachable (docker info failed)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-base: debootstrap needs root; run as root, or build from an official image:" >&2
    echo "  docker build --build-arg BASE=python:3.11-slim -t kvd ." >&2
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "build-base: debootstrap is not installed either; as root: apt-get install -y debootstrap" >&2
    fi
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "build-base: debootstrap is not installed, and there is no apt-get to install it with;" >&2
        echo "  install your distribution's debootstrap package, or build from an official image:" >&2
        echo "  docker build --build-arg BASE=python:3.11-slim -t kvd ." >&2
        exit 1
    fi
    echo "build-base: debootstrap is not installed; installing it: apt-get install -y debootstrap"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
           { apt-get update -qq >/dev/null 2>&1 &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }; }; then
        echo "build-base: could not install debootstrap; run: apt-get update && apt-get install -y debootstrap" >&2
        exit 1
    fi
fi

# One build at a time: a second caller waits, then finds the image and reuses it.
LOCK=${TMPDIR:-/tmp}/kvd-build-base.lock
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [ "$FORCE" = 0 ] && have_image; then
        echo "build-base: $IMAGE was built meanwhile; reusing it"
        exit 0
    fi
fi

ROOT=$(mktemp -d /var/tmp/kvd-base.XXXXXX)
chmod 755 "$ROOT"   # it becomes the image's /
cleanup() {
    for m in proc sys dev/pts dev; do umount "$ROOT/$m" 2>/dev/null || true; done
    rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

start=$(date +%s)
echo "build-base: debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -30 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
echo "build-base: debootstrap took $(( $(date +%s) - start ))s"

# Point apt at the release, its updates and security, and take the updates now.
cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

# The host's own added CAs (not Debian's bundle, which the base has already): a network that
# intercepts TLS is then trusted in `docker build` as on the host.  update-ca-certificates
# runs in the step below either way (the upgrade may bring a new ca-certificates).
CAS=""
if [ "$HOST_CA" = 1 ] && [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates/host"
    for ca in $(find /usr/local/share/ca-certificates -name '*.crt' -type f | sort); do
        cp "$ca" "$ROOT/usr/local/share/ca-certificates/host/"
        CAS="$CAS${CAS:+,}$(basename "$ca")"
    done
    if [ -n "$CAS" ]; then
        echo "build-base: adding this host's CA certificates to the base's trust store: $CAS (KVD_BASE_HOST_CA=0 leaves them out)"
    fi
fi

# apt in a chroot without a pty or apt-utils prints notices that read as failures but are not
# ("E: Can not write log (Is /dev/pts mounted?)", "debconf: delaying package configuration",
# tzdata's and update-ca-certificates' chatter): no pty is asked for (Dpkg::Use-Pty=0), the
# known harmless lines are dropped, and anything else is shown; a failure shows it all.
HARMLESS='^$|^debconf: delaying package configuration, since apt-utils is not installed|^debconf: (unable to initialize frontend|falling back to frontend|\(.*\))|^E: Can not write log \(Is /dev/pts mounted\?\)|^Current default time zone:|^Local time is now:|^Universal Time is now:|^Run .dpkg-reconfigure tzdata. if you wish to change it|^Updating certificates in /etc/ssl/certs|^rehash: warning: skipping ca-certificates.crt|^[0-9]+ added, [0-9]+ removed; done\.$|^Installing new version of config file|^Running hooks in /etc/ca-certificates/update\.d|^done\.$'
mount -t proc proc "$ROOT/proc"
echo "build-base: applying $SUITE-updates and $SUITE-security"
APTLOG=$(mktemp)
if ! chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true sh -c \
        'apt-get -o Dpkg::Use-Pty=0 update -qq &&
         apt-get -o Dpkg::Use-Pty=0 -y -qq upgrade &&
         apt-get clean &&
         update-ca-certificates' >"$APTLOG" 2>&1; then
    umount "$ROOT/proc"
    tail -40 "$APTLOG" >&2
    rm -f "$APTLOG"
    exit 1
fi
umount "$ROOT/proc"
grep -Ev "$HARMLESS" "$APTLOG" | grep -Ev '^(Preconfiguring packages|\(Reading database|Preparing to unpack|Unpacking|Setting up|Processing triggers|Selecting previously unselected|Removing|Adding|Extracting templates)' | sed 's/^/build-base: apt: /' >&2 || true
rm -f "$APTLOG"

# Slim it: package lists, caches, docs, man pages, locales other than C.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/root/.cache \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/usr/share/locale/* "$ROOT"/usr/share/lintian/*
: >"$ROOT/etc/resolv.conf"      # Docker supplies its own at run time
echo "kvd-base" >"$ROOT/etc/hostname"

echo "build-base: importing into $IMAGE"
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL kvd.base.host-ca=${CAS:-none}" \
    --message "kvd base: debootstrap --variant=minbase $SUITE + python3, python3-venv, ca-certificates" \
    - "$IMAGE" >/dev/null
echo "build-base: $IMAGE built in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
