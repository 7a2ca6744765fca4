#!/usr/bin/env bash
# A local highly available PostgreSQL: one etcd and three PostgreSQL 15 nodes run by Patroni, all on
# loopback ports, from Debian's packages (patroni, etcd-server, postgresql-15).
#
#   deploy/cluster.sh start    start it (bootstrapping it on first use), wait for a leader and its
#                              synchronous standby, print the DATABASE_URL to use on stdout
#   deploy/cluster.sh stop     stop it; the data stays, for the next start
#   deploy/cluster.sh url      print the DATABASE_URL
#   deploy/cluster.sh list     patronictl list: the members, their roles and lag
#   deploy/cluster.sh switchover
#                              a planned switchover from the leader to its synchronous standby
#
# `make cluster` and `make cluster-stop` run the first two. Settings, from the environment:
#   CLUSTER_DIR        data, configuration and logs (.data/cluster)
#   CLUSTER_ETCD_PORTS etcd's client and peer ports ("2479 2480")
#   CLUSTER_PG_PORTS   the three PostgreSQL nodes' ports ("5441 5442 5443")
#   CLUSTER_API_PORTS  the three Patroni REST APIs' ports ("8041 8042 8043")
#   CLUSTER_DB         the database named in the URL (identity); `flask --app wsgi migrate` creates it
#
# It is a development and test cluster: trust authentication on 127.0.0.1, every node on one machine.
# Patroni's timings are tight so that a test sees a failover within seconds; README, "Scaling out",
# gives production's choices beside these.
set -euo pipefail

DIR=${CLUSTER_DIR:-.data/cluster}
read -r ETCD_PORT ETCD_PEER_PORT <<<"${CLUSTER_ETCD_PORTS:-2479 2480}"
read -r -a PG_PORTS <<<"${CLUSTER_PG_PORTS:-5441 5442 5443}"
read -r -a API_PORTS <<<"${CLUSTER_API_PORTS:-8041 8042 8043}"
DB=${CLUSTER_DB:-identity}
PG_BIN=/usr/lib/postgresql/15/bin
NODES=(1 2 3)
START_SECONDS=${CLUSTER_START_SECONDS:-120}

die() { echo "cluster.sh: $*" >&2; exit 1; }

# PostgreSQL refuses to run as root: as root, Patroni (and etcd beside it) run as `postgres`.
# setpriv runs the command in its own process, so the pid a start records is the server's own.
as_owner() {
    if ((EUID == 0)); then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}

database_url() {
    local hosts=() port
    for port in "${PG_PORTS[@]}"; do hosts+=("127.0.0.1:$port"); done
    local IFS=,
    echo "postgresql://postgres@${hosts[*]}/$DB?target_session_attrs=read-write"
}

node_config() {
    local n=$1 pg_port=${PG_PORTS[$1-1]} api_port=${API_PORTS[$1-1]} node_dir="$DIR/node$1"
    cat <<EOF
scope: identity
name: node$n
log: {level: INFO}
restapi: {listen: 127.0.0.1:$api_port, connect_address: 127.0.0.1:$api_port}
etcd3: {hosts: 127.0.0.1:$ETCD_PORT}
bootstrap:
  dcs:
    # The leader key lives 10 s; a member checks every second; etcd may stall 3 s before Patroni
    # gives up on it (Patroni needs loop_wait + 2 * retry_timeout <= ttl).
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    # A commit returns only once the synchronous standby has it, and only that standby may be
    # promoted: no acknowledged write is lost in a failover.
    synchronous_mode: true
    # A primary that crashed is not restarted in place: fail over to the synchronous standby at once.
    primary_start_timeout: 0
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 100
        shared_buffers: 32MB
        # Small WAL: a test cluster starts and checkpoints fast.
        min_wal_size: 32MB
        max_wal_size: 64MB
        wal_keep_size: 64MB
  initdb: [{encoding: UTF8}, {locale: C.UTF-8}]
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$pg_port
  connect_address: 127.0.0.1:$pg_port
  data_dir: $node_dir/data
  bin_dir: $PG_BIN
  pgpass: $node_dir/pgpass
  authentication:
    superuser: {username: postgres}
    replication: {username: replicator}
    rewind: {username: postgres}
  parameters:
    unix_socket_directories: $node_dir
tags: {nofailover: false, noloadbalance: false, clonefrom: false, nosync: false}
EOF
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Start a command in the background, detached from this shell, its output in log, its pid in pidfile.
spawn() {
    local pidfile=$1 log=$2
    shift 2
    running "$pidfile" && return
    # In a session of its own, so a Ctrl-C on the make that started it does not reach it; setsid may
    # fork, so the process writes its own pid before it becomes the server.
    # shellcheck disable=SC2016
    as_owner setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$log" 2>&1 </dev/null &
    wait_for "$pidfile" test -s "$pidfile"
}

prepare_dir() {
    mkdir -p "$DIR"
    ((EUID == 0)) && chown postgres: "$DIR"
    as_owner test -w "$DIR" -a -x "$DIR" || die "$DIR: the postgres user cannot write here (or reach it)"
    local n
    for n in "${NODES[@]}"; do
        as_owner mkdir -p "$DIR/node$n"
        node_config "$n" | as_owner tee "$DIR/node$n/patroni.yml" >/dev/null
    done
}

start_etcd() {
    spawn "$DIR/etcd.pid" "$DIR/etcd.log" etcd --name etcd0 --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "etcd0=http://127.0.0.1:$ETCD_PEER_PORT"
    wait_for "etcd" etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health
}

start_nodes() {
    local n
    for n in "${NODES[@]}"; do
        spawn "$DIR/node$n/patroni.pid" "$DIR/node$n/patroni.log" patroni "$DIR/node$n/patroni.yml"
    done
}

# Retry a check every 0.2 s until it passes; give up after START_SECONDS.
wait_for() {
    local what=$1 deadline=$((SECONDS + START_SECONDS))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after $START_SECONDS s; logs in $DIR"
        sleep 0.2
    done
}

# Ready when a leader takes writes and every node streams, one of them the synchronous standby.
healthy() {
    local list
    list=$(patronictl -c "$DIR/node1/patroni.yml" list -f json) || return 1
    python3 - "$list" <<'EOF'
import json, sys
members = json.loads(sys.argv[1])
roles = sorted(member["Role"] for member in members)
streaming = all(member["State"] in ("running", "streaming") for member in members)
sys.exit(not (streaming and roles == ["Leader", "Replica", "Sync Standby"]))
EOF
}

start() {
    command -v patroni >/dev/null && command -v etcd >/dev/null && [[ -x $PG_BIN/postgres ]] ||
        die "needs Debian's patroni, etcd-server and postgresql-15 (make cluster installs them)"
    prepare_dir
    start_etcd
    start_nodes
    wait_for "the cluster" healthy
    database_url
}

stop_pidfile() {
    local pidfile=$1
    running "$pidfile" || return 0
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$pidfile"
}

# Patroni stops its PostgreSQL as it exits; etcd goes last, as the members still talk to it.
stop() {
    local n
    for n in "${NODES[@]}"; do stop_pidfile "$DIR/node$n/patroni.pid" & done
    wait
    stop_pidfile "$DIR/etcd.pid"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
url) database_url ;;
list) patronictl -c "$DIR/node1/patroni.yml" list ;;
switchover) patronictl -c "$DIR/node1/patroni.yml" switchover --force ;;
*) die "usage: $0 start|stop|url|list|switchover" ;;
esac
