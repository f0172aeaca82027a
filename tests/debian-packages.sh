#!/bin/sh
# The Debian packages the tests need, installed when missing; `make test` runs this first.
#
#   redis-cli            redis-tools       (real clients against real nodes)
#   redis-server         redis-server      (kvd's replies compared with a real Redis's)
#   chromium, driver     chromium chromium-driver   (the cluster page's browser test)
#   nft                  nftables          (the fault suite's network partitions)
#   debootstrap          debootstrap       (the Docker tests build their base image from Debian)
#   etcd, wrk            etcd-server wrk   (the benchmark's short form runs etcd beside kvd)
#
# As root it installs what is missing (apt-get update first).  Otherwise it prints the one
# `apt-get install` line to run and exits 1, before any test starts.
set -eu
need=""
command -v redis-cli >/dev/null 2>&1 || need="$need redis-tools"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
command -v nft >/dev/null 2>&1 || need="$need nftables"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v etcd >/dev/null 2>&1 || need="$need etcd-server"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "tests need Debian packages; run: sudo apt-get install -y$need" >&2
    exit 1
fi
echo "installing Debian packages the tests need:$need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null
