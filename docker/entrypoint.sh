#!/bin/sh
# The kvd container's entrypoint.
#
#   docker run kvd [twistd kvd options]     run a node (twistd as PID 1, so SIGTERM stops it gracefully)
#   docker run -it kvd sh                   any other command runs instead
#
# Defaults for the options not given (none at all with --config, whose file then rules):
#   --listen   $KVD_LISTEN    (default <container hostname>:7001): the node's id and the address peers dial
#   --bind     $KVD_BIND      (default 0.0.0.0): listen on every interface, so the node stays reachable on
#                              loopback (docker exec, the HEALTHCHECK) when its network is disconnected,
#                              and on its new address when the network comes back with another one
#   --data-dir $KVD_DATA_DIR  (default /data, the volume)
set -e
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
listen=1 bind=1 data=1
for arg in "$@"; do
    case "$arg" in
        -c|--config|--config=*) listen=0 bind=0 data=0 ;;
        -l|--listen|--listen=*) listen=0 ;;
        --bind|--bind=*) bind=0 ;;
        -d|--data-dir|--data-dir=*) data=0 ;;
    esac
done
[ "$data" = 1 ] && set -- --data-dir "${KVD_DATA_DIR:-/data}" "$@"
[ "$bind" = 1 ] && set -- --bind "${KVD_BIND:-0.0.0.0}" "$@"
[ "$listen" = 1 ] && set -- --listen "${KVD_LISTEN:-$(hostname):7001}" "$@"
exec twistd --nodaemon --pidfile= kvd "$@"
