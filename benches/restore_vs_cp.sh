#!/usr/bin/env bash
# Replays the same WAL into the same restored base backup with `restore_command = 'cp ARCHIVE/%f
# %p'` and with `walden-restore wal-fetch` (plain and zstd store, with and without --prefetch),
# interleaved, and prints the time from server start to the end of recovery with the ratio to
# cp; then times 1000 single restore_command calls of each kind. See benches/README.md.
# Run as root:
#
#   benches/restore_vs_cp.sh                                  # full run: >= 1 GB of WAL, 3 rounds
#   QUICK=1 benches/restore_vs_cp.sh                          # smoke run: ~200 MB, 1 round
#   VARIANTS="cp walden-plain" benches/restore_vs_cp.sh       # some variants only
#   WALDEN=target/release/walden WALDEN_RESTORE=target/release/walden-restore benches/...
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
helper="$here/rsbench.py"
recvhelper="$here/recvbench.py"
export PYTHONDONTWRITEBYTECODE=1 # rsbench.py imports recvbench.py: no __pycache__ in benches/

# --- settings (environment) --------------------------------------------------------------------
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    ROUNDS="${ROUNDS:-1}"
    SCALE="${SCALE:-10}"
    WAL_MB="${WAL_MB:-200}"
    CALLS="${CALLS:-100}"
else
    ROUNDS="${ROUNDS:-3}"
    SCALE="${SCALE:-50}"
    WAL_MB="${WAL_MB:-1200}"
    CALLS="${CALLS:-1000}"
fi
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
VARIANTS="${VARIANTS:-cp walden-plain walden-zstd walden-plain-prefetch walden-zstd-prefetch}"
PREFETCH="${PREFETCH:-8}"         # wal-fetch --prefetch N in the prefetch variants
BATCH="${BATCH:-10}"              # per-call benchmark: calls of one kind in a row
CLIENTS="${CLIENTS:-4}"           # pgbench clients generating the WAL (-j 2)
DROP_CACHES="${DROP_CACHES:-1}"   # 1: sync and drop the page cache before every recovery
PG_ROOT="${PG_ROOT:-/dev/shm}"    # servers' data directories (primary, restored) and spools
STORE_ROOT="${STORE_ROOT:-/var/tmp}" # the stores and the cp archive: a real disk
OUT="${OUT:-results.json}"
RECOVERY_TIMEOUT="${RECOVERY_TIMEOUT:-900}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WARNED=0
warn() {
    WARNED=1
    log "WARNING: $*"
}
die() {
    printf 'restore_vs_cp: error: %s\n' "$*" >&2
    exit 1
}

# --- pre-flight checks (nothing started yet) ---------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (servers run as the postgres user; dropping caches needs root)"
id postgres >/dev/null 2>&1 || die "there is no 'postgres' user to run the server as"
command -v python3 >/dev/null || die "python3 (3.11+) is needed for $helper"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11"
for tool in initdb pg_ctl postgres psql pgbench; do
    [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool not found (set PGBIN to a PostgreSQL bin directory)"
done
runuser -u postgres -- test -x "$PGBIN/postgres" ||
    die "the postgres user cannot run $PGBIN/postgres; copy the install tree somewhere it can reach"
for v in $VARIANTS; do
    case "$v" in
    cp | walden-plain | walden-zstd | walden-plain-prefetch | walden-zstd-prefetch) ;;
    *) die "unknown variant '$v' in VARIANTS" ;;
    esac
done
[ -n "$VARIANTS" ] || die "VARIANTS is empty"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer"
[[ "$WAL_MB" =~ ^[1-9][0-9]*$ ]] || die "WAL_MB must be a positive integer (MiB of WAL to replay)"
[[ "$CALLS" =~ ^[0-9]+$ ]] || die "CALLS must be a number (0: no per-call benchmark)"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "BATCH must be a positive integer"
[[ "$PREFETCH" =~ ^[1-9][0-9]*$ ]] || die "PREFETCH must be a positive integer"
mkdir -p "$STORE_ROOT"
if [ "$(stat -f -c %T "$STORE_ROOT")" = tmpfs ] && [ "${ALLOW_TMPFS:-0}" != 1 ]; then
    die "STORE_ROOT=$STORE_ROOT is tmpfs: reading the WAL from disk is measured, use a real disk (or ALLOW_TMPFS=1)"
fi
[ -d "$PG_ROOT" ] && [ -w "$PG_ROOT" ] || die "PG_ROOT=$PG_ROOT is not a writable directory"

if [ -z "${WALDEN:-}" ] || [ -z "${WALDEN_RESTORE:-}" ]; then
    log "building walden and walden-restore in release mode (set WALDEN and WALDEN_RESTORE to skip)"
    (cd "$repo" && cargo build --release --quiet --bin walden --bin walden-restore) ||
        die "cargo build --release failed"
    WALDEN="${WALDEN:-$repo/target/release/walden}"
    WALDEN_RESTORE="${WALDEN_RESTORE:-$repo/target/release/walden-restore}"
fi
for b in "$WALDEN" "$WALDEN_RESTORE"; do
    [ -x "$b" ] || die "binary '$b' does not exist or is not executable"
done
WALDEN="$(realpath "$WALDEN")"
WALDEN_RESTORE="$(realpath "$WALDEN_RESTORE")"
"$WALDEN" receive --help 2>/dev/null | grep -q -- --compress ||
    die "$WALDEN has no 'receive' subcommand with --compress (an older build?)"
"$WALDEN_RESTORE" wal-fetch --help 2>/dev/null | grep -q -- --spool ||
    die "$WALDEN_RESTORE has no 'wal-fetch' subcommand with --spool (an older build?)"
runuser -u postgres -- test -x "$WALDEN_RESTORE" ||
    die "the postgres user cannot run $WALDEN_RESTORE (restore_command runs as the server's user)"

# --- state and cleanup -------------------------------------------------------------------------
WORK=""       # on PG_ROOT: primary, restored data directories, spools, logs
STORE_WORK="" # on STORE_ROOT: the two stores and the cp archive
PRIMARY_UP=0
RECV_PIDS=()

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM HUP
    trap '' PIPE # stdout or stderr may be a closed pipe (| head): finish cleaning up regardless
    local pid
    for pid in "${RECV_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$PRIMARY_UP" = 1 ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate -w stop >/dev/null 2>&1
    fi
    # A restored server left running by an interrupted run (its postmaster.pid names it).
    if [ -n "$WORK" ]; then
        local pidfile
        for pidfile in "$WORK"/pgdata-*/postmaster.pid; do
            [ -f "$pidfile" ] || continue
            pid="$(head -n 1 "$pidfile")"
            [[ "$pid" =~ ^[0-9]+$ ]] && kill -QUIT "$pid" 2>/dev/null
            sleep 1
        done
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ -n "$WORK" ] && [ -f "$WORK/primary.log" ]; then
        echo "--- last lines of the primary's log ---" >&2
        tail -n 15 "$WORK/primary.log" >&2
    fi
    if [ -n "$WORK" ] && [ -d "$WORK/logs" ] &&
        { [ "$WARNED" = 1 ] || [ "${KEEP_LOGS:-0}" = 1 ] || { [ "$rc" != 0 ] && [ "$rc" != 130 ]; }; }; then
        local keep
        keep="$(dirname "$OUT")/walden-bench-logs.$(date +%Y%m%dT%H%M%S)"
        mkdir -p "$keep" && cp -r "$WORK/logs/." "$keep/" && cp "$WORK"/*.log "$keep/" 2>/dev/null
        echo "logs kept in $keep" >&2
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ -n "$STORE_WORK" ] && rm -rf "$STORE_WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

WORK="$(mktemp -d "$PG_ROOT/walden-bench.XXXXXX")"
STORE_WORK="$(mktemp -d "$STORE_ROOT/walden-bench-restore.XXXXXX")"
chown postgres: "$WORK"
chmod 0755 "$WORK" "$STORE_WORK" # the servers (postgres) read the stores and the archive
mkdir "$WORK/logs"
RAW="$WORK/raw.jsonl"
CALLS_OUT="$WORK/calls.json"
PLAIN="$STORE_WORK/store-plain"
ZSTD="$STORE_WORK/store-zstd"
ARCHIVE="$STORE_WORK/archive"

PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export PGBIN PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
CONNINFO="host=127.0.0.1 port=$PORT user=postgres"

q() { "$PGBIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

# wait_for SECONDS SQL: poll until SQL returns t; dies if a receiver exits meanwhile.
wait_for() {
    local limit="$1" sql="$2" start=$SECONDS pid
    while [ "$(q "$sql")" != t ]; do
        for pid in "${RECV_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "a receiver exited early (logs: $WORK/logs/receive-*.log)"
        done
        [ $((SECONDS - start)) -lt "$limit" ] || return 1
        sleep 0.2
    done
}

# --- setup: primary, two receivers, a backup, the WAL ------------------------------------------
log "$("$PGBIN/postgres" --version); servers in $WORK, stores and archive in $STORE_WORK"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth=trust --no-sync \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
# The restored servers inherit this configuration from the backup (the primary is gone by then,
# so they take over its port and socket directory).
cat >>"$WORK/primary/postgresql.conf" <<EOF
# restore_vs_cp.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 1h
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
EOF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w -t 120 start >/dev/null ||
    die "the primary did not start"
PRIMARY_UP=1
log "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
q "VACUUM ANALYZE" >/dev/null
q "CHECKPOINT" >/dev/null

# Two receivers, one slot each (created at the current position): a plain store and a zstd one.
start_receiver() { # NAME STORE [ARGS...]
    local name="$1" store="$2"
    shift 2
    setsid "$WALDEN" receive --source "$CONNINFO" --store "$store" --cluster bench \
        --slot "bench_$name" --create-slot --status-interval 1s "$@" \
        >"$WORK/logs/receive-$name.log" 2>&1 </dev/null &
    RECV_PIDS+=($!)
}
start_receiver plain "$PLAIN"
start_receiver zstd "$ZSTD" --compress zstd
SLOTS_STREAMING="SELECT count(*) = 2 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name IN ('bench_plain', 'bench_zstd') AND r.state = 'streaming'"
wait_for 60 "$SLOTS_STREAMING" || die "the receivers did not start streaming within 60 s"

# One backup, into the plain store; its directory is then copied into the zstd store (the store
# layout is documented as copyable by hand), so both stores restore the very same backup and
# every variant replays exactly the same WAL from the same starting point.
log "walden backup into the plain store"
"$WALDEN" backup --source "$CONNINFO" --store "$PLAIN" --cluster bench --checkpoint fast \
    >"$WORK/logs/backup.log" 2>&1 || { tail -n 20 "$WORK/logs/backup.log" >&2; die "walden backup failed"; }
BACKUP_ID="$(ls "$PLAIN/bench/backups" | grep -E '^[0-9]{8}T[0-9]{6}Z(-[0-9]+)?$' | tail -n 1)"
[ -n "$BACKUP_ID" ] || die "no complete backup in $PLAIN/bench/backups"
mkdir -p "$ZSTD/bench/backups"
cp -a "$PLAIN/bench/backups/$BACKUP_ID" "$ZSTD/bench/backups/"
BACKUP_START="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["start_lsn"])' \
    "$PLAIN/bench/backups/$BACKUP_ID/backup.json")"

# The WAL: pgbench in 10-second runs, each followed by a CHECKPOINT, until WAL_MB MiB have been
# written since the backup began. The checkpoints keep the mix like a production server's (full
# page images after each one; without them the WAL rate falls from ~11 to ~1 MB/s once every
# page has been written once, and the setup takes ten minutes).
want=$((WAL_MB * 1024 * 1024))
log "backup $BACKUP_ID starts at $BACKUP_START; pgbench -c $CLIENTS until $WAL_MB MiB of WAL"
while :; do
    now="$(q "SELECT pg_current_wal_lsn()")"
    done_bytes="$(python3 "$recvhelper" lsn-sub "$now" "$BACKUP_START")"
    [ "$done_bytes" = 0 ] || log "  $((done_bytes / 1024 / 1024)) MiB"
    [ "$done_bytes" -lt "$want" ] || break
    "$PGBIN/pgbench" -c "$CLIENTS" -j 2 -T 10 >>"$WORK/logs/pgbench.log" 2>&1 ||
        { tail -n 20 "$WORK/logs/pgbench.log" >&2; die "pgbench failed"; }
    q "CHECKPOINT" >/dev/null
done
# The target: the start of the switch record (the insert position just before the switch), so
# an inclusive LSN target ends replay with the switch record and never needs the segment after
# it, which the cp archive (complete segments only) does not have. Recovery promotes there.
IFS='|' read -r TARGET_LSN SWITCH_LSN <<<"$(q "SELECT pg_current_wal_insert_lsn(), pg_switch_wal()")"
log "switched at $SWITCH_LSN; target $TARGET_LSN; waiting for both receivers to flush it"
wait_for 300 "SELECT count(*) = 2 AND bool_and(r.flush_lsn >= '$SWITCH_LSN') FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name IN ('bench_plain', 'bench_zstd')" ||
    die "the receivers did not flush $SWITCH_LSN within 300 s"
# The zstd store compresses a segment after it is complete: wait until the last one is.
last_seg="$("$PGBIN/psql" -X -A -t -q -c "SELECT pg_walfile_name('$TARGET_LSN')")"
for _ in $(seq 1 300); do
    [ -n "$(find "$ZSTD/bench/wal" -name "$last_seg.zst")" ] && break
    sleep 0.2
done
for pid in "${RECV_PIDS[@]}"; do
    kill -INT "$pid"
    rc=0
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || warn "a receiver exited with status $rc after SIGINT"
done
RECV_PIDS=()
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/primary" -m fast -w stop >/dev/null ||
    die "the primary did not stop"
PRIMARY_UP=0
rm -rf "$WORK/primary" # frees PG_ROOT (tmpfs) for the restored servers
chmod -R go+rX "$STORE_WORK"

# The cp archive: the plain store's complete segments (and history files), flat.
mkdir "$ARCHIVE"
find "$PLAIN/bench/wal" -type f -regextype posix-extended -regex '.*/([0-9A-F]{24}|[0-9A-F]{8}\.history)' \
    -exec cp -t "$ARCHIVE" {} +
chmod -R go+rX "$ARCHIVE"
WAL_BYTES="$(python3 "$recvhelper" lsn-sub "$TARGET_LSN" "$BACKUP_START")"
SEGMENTS="$(find "$ARCHIVE" -name '????????????????????????' | wc -l)"
ZSTD_BYTES="$(find "$ZSTD/bench/wal" -type f -name '*.zst' -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
zstd_plain_left="$(find "$ZSTD/bench/wal" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}' | wc -l)"
[ "$zstd_plain_left" = 0 ] || warn "$zstd_plain_left segments in the zstd store are not compressed"
log "$((WAL_BYTES / 1024 / 1024)) MiB of WAL to replay; archive: $SEGMENTS segments; zstd store: $((ZSTD_BYTES / 1024 / 1024)) MiB of .zst"
"$WALDEN_RESTORE" restore --from "$PLAIN" --cluster bench --pgdata "$WORK/dry" \
    --target-lsn "$TARGET_LSN" --target-action promote --dry-run >"$WORK/logs/plan.txt" 2>&1 ||
    { cat "$WORK/logs/plan.txt" >&2; die "walden-restore cannot plan the restore"; }
sed 's/^/  /' "$WORK/logs/plan.txt" >&2

# --- one recovery ------------------------------------------------------------------------------
# run_one VARIANT ROUND POSITION
run_one() {
    local variant="$1" round="$2" position="$3"
    local tag="$variant-r$round" store="$PLAIN" extra=() spool=""
    local pgdata="$WORK/pgdata-$tag"
    case "$variant" in *zstd*) store="$ZSTD" ;; esac
    case "$variant" in *prefetch) extra=(--prefetch "$PREFETCH") spool="$WORK/spool-$tag" ;; esac
    # Not timed: extract the backup and write the recovery settings.
    "$WALDEN_RESTORE" restore --from "$store" --cluster bench --pgdata "$pgdata" --owner postgres \
        --target-lsn "$TARGET_LSN" --target-action promote "${extra[@]}" \
        >"$WORK/logs/$tag.restore" 2>&1 ||
        { cat "$WORK/logs/$tag.restore" >&2; die "walden-restore restore failed ($tag)"; }
    case "$variant" in
    cp) python3 "$helper" conf "$pgdata" cp "$ARCHIVE" >"$WORK/logs/$tag.command" ;;
    *prefetch) python3 "$helper" conf "$pgdata" spool "$spool" >"$WORK/logs/$tag.command" ;;
    *) grep '^restore_command' "$pgdata/postgresql.auto.conf" >"$WORK/logs/$tag.command" ;;
    esac
    local dropped=0
    if [ "$DROP_CACHES" = 1 ]; then
        sync
        if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then dropped=1; fi
    fi
    python3 "$helper" recover raw="$RAW" variant="$variant" round="$round" position="$position" \
        pgdata="$pgdata" log="$WORK/logs/$tag.server.log" pgbin="$PGBIN" spool="$spool" \
        dropped="$dropped" timeout="$RECOVERY_TIMEOUT" ||
        { tail -n 15 "$WORK/logs/$tag.server.log" >&2; warn "$tag did not complete recovery"; }
    rm -rf "$pgdata"
    [ -z "$spool" ] || rm -rf "$spool"
}

# --- the runs: every round runs every variant, the first one rotating from round to round ------
read -r -a LIST <<<"$VARIANTS"
n=${#LIST[@]}
log "$((ROUNDS * n)) recoveries ($ROUNDS rounds: $VARIANTS; prefetch $PREFETCH; drop caches: $DROP_CACHES)"
for round in $(seq 1 "$ROUNDS"); do
    log "round $round"
    for i in $(seq 0 $((n - 1))); do
        run_one "${LIST[$(((i + round - 1) % n))]}" "$round" $((i + 1))
    done
done

# --- per call ----------------------------------------------------------------------------------
if [ "$CALLS" -gt 0 ]; then
    # A segment from the middle of the range; a missing name: the one after the newest name the
    # plain store holds in any form (the receivers left the segment after the switch as a
    # .partial, which wal-fetch would serve).
    present="$(ls "$ARCHIVE" | grep -E '^[0-9A-F]{24}$' | sort | sed -n "$((SEGMENTS / 2 + 1))p")"
    newest="$(find "$PLAIN/bench/wal" -type f -printf '%f\n' | grep -oE '^[0-9A-F]{24}' | sort | tail -n 1)"
    missing="$(python3 -c '
import sys
n = sys.argv[1]
log_, seg = int(n[8:16], 16), int(n[16:], 16) + 1
if seg > 0xFF:  # 16 MiB segments: 256 per log file
    log_, seg = log_ + 1, 0
print(f"{n[:8]}{log_:08X}{seg:08X}")' "$newest")"
    log "per call: $CALLS calls each, batches of $BATCH (present $present, missing $missing)"
    python3 "$helper" calls "$CALLS_OUT" n="$CALLS" batch="$BATCH" dest="$WORK/RECOVERYXLOG" \
        archive="$ARCHIVE" plain="$PLAIN" zstd="$ZSTD" cluster=bench present="$present" \
        missing="$missing" walden_restore="$WALDEN_RESTORE"
fi

# --- report ------------------------------------------------------------------------------------
BENCH_SERVER_VERSION="$("$PGBIN/postgres" --version)"
BENCH_WALDEN="$WALDEN"
BENCH_WALDEN_RESTORE="$WALDEN_RESTORE"
BENCH_WALDEN_VERSION="$("$WALDEN_RESTORE" --version 2>/dev/null || true)"
BENCH_KERNEL="$(uname -r)"
BENCH_CPUS="$(nproc)"
BENCH_WAL_BYTES="$WAL_BYTES"
BENCH_SEGMENTS="$SEGMENTS"
BENCH_BACKUP_START="$BACKUP_START"
BENCH_TARGET_LSN="$TARGET_LSN"
BENCH_ZSTD_BYTES="$ZSTD_BYTES"
export BENCH_SERVER_VERSION BENCH_WALDEN BENCH_WALDEN_RESTORE BENCH_WALDEN_VERSION BENCH_KERNEL \
    BENCH_CPUS BENCH_WAL_BYTES BENCH_SEGMENTS BENCH_BACKUP_START BENCH_TARGET_LSN BENCH_ZSTD_BYTES \
    ROUNDS SCALE WAL_MB VARIANTS PREFETCH CALLS BATCH DROP_CACHES PG_ROOT STORE_ROOT
python3 "$helper" report "$RAW" "$CALLS_OUT" "$OUT"
