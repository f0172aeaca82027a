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
#   --peer-cert/--peer-key/--peer-ca  unless given (or --insecure-peers): made from the cluster CA in
#              $KVD_CERTS_DIR (default /certs), a volume the cluster's containers share; the first node
#              to start makes the CA (under a lock), each node its own certificate (CN = its node id)
set -e
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
listen=1 bind=1 data=1 config=0 data_dir=${KVD_DATA_DIR:-/data} prev=
peer_tls=1 node_id= listen_at= cluster_id=kvd
for arg in "$@"; do
    case "$prev" in
        -l|--listen) listen_at=$arg ;;
        --node-id) node_id=$arg ;;
        --cluster-id) cluster_id=$arg ;;
    esac
    case "$arg" in
        --listen=*) listen_at=${arg#--listen=} ;;
        --node-id=*) node_id=${arg#--node-id=} ;;
        --cluster-id=*) cluster_id=${arg#--cluster-id=} ;;
        --peer-cert|--peer-cert=*|--insecure-peers) peer_tls=0 ;;
    esac
    case "$arg" in
        -c|--config|--config=*) listen=0 bind=0 data=0 config=1 peer_tls=0 ;;
        -l|--listen|--listen=*) listen=0 ;;
        --bind|--bind=*) bind=0 ;;
        -d|--data-dir) data=0 ;;
        --data-dir=*) data=0 data_dir=${arg#--data-dir=} ;;
    esac
    case "$prev" in -d|--data-dir) data_dir=$arg config=0 ;; esac
    prev=$arg
done
# The data directory must be writable by this user (uid 10001 unless --user says otherwise): a
# bind-mounted host directory keeps its host owner.  Say so in one line, with the fix, rather than
# let LMDB fail with a traceback.  (With --config the node itself checks, with the same advice.)
if [ "$config" = 0 ]; then
    dir=$data_dir
    while [ ! -e "$dir" ] && [ "$dir" != / ]; do dir=$(dirname "$dir"); done
    if [ ! -w "$dir" ] || [ ! -x "$dir" ]; then
        uid=$(id -u) gid=$(id -g)
        # The mount's source as /proc/self/mountinfo names it (the host path, for a bind mount
        # of a directory on the host's root filesystem), and whether it is read-only.
        source=$(awk -v d="$dir" '$5 == d { print $4 }' /proc/self/mountinfo 2>/dev/null | tail -1)
        options=$(awk -v d="$dir" '$5 == d { print $6 }' /proc/self/mountinfo 2>/dev/null | tail -1)
        case ",$options," in
            *,ro,*)
                echo "kvd: the data directory $dir is mounted read-only (${source:-?}); mount it read-write (drop :ro)" >&2
                exit 1 ;;
        esac
        owner=$(stat -c 'uid %u, gid %g, mode %a' "$dir" 2>/dev/null || echo "unknown owner")
        echo "kvd: the data directory $dir is not writable by this container's user (uid $uid, gid $gid): it is owned by $owner; on the host run: chown -R $uid:$gid ${source:-<the host directory mounted on $dir>} (or docker run --user <its owner's uid:gid>)" >&2
        exit 1
    fi
fi
# Peer certificates: from the shared CA volume, made on first use (kvd.cli.certs).
if [ "$peer_tls" = 1 ]; then
    node=${node_id:-${listen_at:-${KVD_LISTEN:-$(hostname):7001}}}
    certs=${KVD_CERTS_DIR:-/certs}
    mkdir -p "$certs" 2>/dev/null || true
    if [ ! -w "$certs" ] && [ ! -e "$certs/ca.crt" ]; then
        certs=$data_dir/certs  # /certs not ours (docker run --user): a CA of this node's own
    fi
    tls_args=$(python -m kvd.cli.certs node --dir "$certs" --node "$node" --cluster "$cluster_id") || exit 1
    # shellcheck disable=SC2086  # three options and three paths, none with spaces
    set -- "$@" $tls_args
fi
[ "$data" = 1 ] && set -- --data-dir "$data_dir" "$@"
[ "$bind" = 1 ] && set -- --bind "${KVD_BIND:-0.0.0.0}" "$@"
[ "$listen" = 1 ] && set -- --listen "${KVD_LISTEN:-$(hostname):7001}" "$@"
exec twistd --nodaemon --pidfile= kvd "$@"
