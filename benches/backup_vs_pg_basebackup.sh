#!/usr/bin/env bash
# Takes base backups of one idle PostgreSQL cluster with `walden backup --include-wal` and
# `pg_basebackup -Ft -X fetch`, interleaved, at three compression settings, and prints per-variant
# tables (throughput, client CPU, peak RSS) with walden / pg_basebackup ratios and the backup
# targets. See benches/README.md. Run as root:
#
#   benches/backup_vs_pg_basebackup.sh                        # full run, ~3 minutes
#   QUICK=1 benches/backup_vs_pg_basebackup.sh                # smoke run, scale 10, ~15 seconds
#   TOOLS=pg_basebackup QUICK=1 benches/...                   # the pg_basebackup half alone
#   VARIANTS=none benches/...                                 # only the uncompressed pair
#   WALDEN=target/release/walden benches/...                  # use this binary, do not build
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
helper="$here/bkbench.py"
export PYTHONDONTWRITEBYTECODE=1 # bkbench.py imports recvbench.py: no __pycache__ in benches/

# --- settings (environment) --------------------------------------------------------------------
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    ROUNDS="${ROUNDS:-1}"
    SCALE="${SCALE:-10}"
    WARMUP="${WARMUP:-0}"
else
    ROUNDS="${ROUNDS:-3}"
    SCALE="${SCALE:-100}"
    WARMUP="${WARMUP:-1}"
fi
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
TOOLS="${TOOLS:-walden pg_basebackup}"
VARIANTS="${VARIANTS:-none zstd server-zstd}"
ZSTD_LEVEL="${ZSTD_LEVEL:-3}"                     # given explicitly to both tools
PG_ROOT="${PG_ROOT:-/dev/shm}"                    # where the server's data directory goes
BACKUP_ROOT="${BACKUP_ROOT:-/var/tmp}"            # where the backups are written: a real disk
OUT="${OUT:-results.json}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WARNED=0
warn() {
    WARNED=1
    log "WARNING: $*"
}
die() {
    printf 'backup_vs_pg_basebackup: error: %s\n' "$*" >&2
    exit 1
}

# --- pre-flight checks (nothing started yet) ---------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (the server runs as the postgres user, the backups as root)"
id postgres >/dev/null 2>&1 || die "there is no 'postgres' user to run the server as"
command -v python3 >/dev/null || die "python3 (3.11+) is needed for $helper"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11"
for tool in initdb pg_ctl postgres psql pgbench pg_basebackup; do
    [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool not found (set PGBIN to a PostgreSQL bin directory)"
done
runuser -u postgres -- test -x "$PGBIN/postgres" ||
    die "the postgres user cannot run $PGBIN/postgres; copy the install tree somewhere it can reach"
major_of() { "$1" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/'; }
server_major="$(major_of "$PGBIN/postgres")"
bb_major="$(major_of "$PGBIN/pg_basebackup")"
[ "$server_major" = "$bb_major" ] ||
    die "pg_basebackup $bb_major with server $server_major: use the server's own tools"
[ -n "$TOOLS" ] || die "TOOLS is empty"
for t in $TOOLS; do
    case "$t" in walden | pg_basebackup) ;; *) die "unknown tool '$t' in TOOLS" ;; esac
done
[ -n "$VARIANTS" ] || die "VARIANTS is empty"
for v in $VARIANTS; do
    case "$v" in
    none) ;;
    zstd | server-zstd)
        [ "$server_major" -ge 15 ] ||
            die "variant $v needs PostgreSQL 15 or later (this is $server_major): set VARIANTS=none"
        ;;
    *) die "unknown variant '$v' in VARIANTS (none, zstd, server-zstd)" ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a number of unmeasured backups per tool"
[[ "$ZSTD_LEVEL" =~ ^[0-9]+$ ]] && [ "$ZSTD_LEVEL" -ge 1 ] && [ "$ZSTD_LEVEL" -le 19 ] ||
    die "ZSTD_LEVEL must be 1 to 19"
mkdir -p "$BACKUP_ROOT"
if [ "$(stat -f -c %T "$BACKUP_ROOT")" = tmpfs ] && [ "${ALLOW_TMPFS:-0}" != 1 ]; then
    die "BACKUP_ROOT=$BACKUP_ROOT is tmpfs: the backups' writes and fsyncs are measured, use a real disk (or ALLOW_TMPFS=1)"
fi
[ -d "$PG_ROOT" ] && [ -w "$PG_ROOT" ] || die "PG_ROOT=$PG_ROOT is not a writable directory"

case " $TOOLS " in
*" walden "*)
    if [ -z "${WALDEN:-}" ]; then
        log "building walden in release mode (set WALDEN=/path/to/walden to skip)"
        (cd "$repo" && cargo build --release --quiet --bin walden) ||
            die "cargo build --release failed"
        WALDEN="$repo/target/release/walden"
    fi
    [ -x "$WALDEN" ] || die "walden binary '$WALDEN' does not exist or is not executable
  (set WALDEN=/path/to/walden, or TOOLS=pg_basebackup to measure pg_basebackup alone)"
    WALDEN="$(realpath "$WALDEN")"
    "$WALDEN" backup --help 2>/dev/null | grep -q -- --include-wal ||
        die "$WALDEN has no 'backup' subcommand with --include-wal (an older build?)
  set TOOLS=pg_basebackup to measure pg_basebackup alone"
    ;;
esac

# --- state and cleanup -------------------------------------------------------------------------
WORK=""        # server temp dir (data, socket, logs)
BACKUP_WORK="" # the backups' target directories (on disk)
SERVER_UP=0

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM HUP
    trap '' PIPE # stdout or stderr may be a closed pipe (| head): finish cleaning up regardless
    if [ "$SERVER_UP" = 1 ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 130 ] && [ -n "$WORK" ] && [ -f "$WORK/server.log" ]; then
        echo "--- last lines of the server log ---" >&2
        tail -n 15 "$WORK/server.log" >&2
    fi
    # Keep the tools' and the server's logs when something went wrong (or KEEP_LOGS=1).
    if [ -n "$WORK" ] && [ -d "$WORK/logs" ] &&
        { [ "$WARNED" = 1 ] || [ "${KEEP_LOGS:-0}" = 1 ] || { [ "$rc" != 0 ] && [ "$rc" != 130 ]; }; }; then
        local keep
        keep="$(dirname "$OUT")/walden-bench-logs.$(date +%Y%m%dT%H%M%S)"
        mkdir -p "$keep" && cp -r "$WORK/logs/." "$keep/" &&
            cp "$WORK/server.log" "$WORK"/*.log "$keep/" 2>/dev/null
        echo "logs kept in $keep" >&2
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ -n "$BACKUP_WORK" ] && rm -rf "$BACKUP_WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

WORK="$(mktemp -d "$PG_ROOT/walden-bench.XXXXXX")"
BACKUP_WORK="$(mktemp -d "$BACKUP_ROOT/walden-bench-backup.XXXXXX")"
chown postgres: "$WORK"
chmod 0755 "$WORK"
mkdir "$WORK/logs"
RAW="$WORK/raw.jsonl"

PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export PGBIN PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
CONNINFO="host=127.0.0.1 port=$PORT user=postgres"

q() { "$PGBIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

# --- server ------------------------------------------------------------------------------------
log "$("$PGBIN/postgres" --version) in $WORK, backups written under $BACKUP_WORK"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$WORK/data/postgresql.conf" <<EOF
# backup_vs_pg_basebackup.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 1h
wal_level = replica
max_wal_senders = 10
EOF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null ||
    die "the server did not start"
SERVER_UP=1
log "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
q "VACUUM ANALYZE" >/dev/null
q "CHECKPOINT" >/dev/null
# The throughput denominator, the same for both tools: the size of every database.
CLUSTER_BYTES="$(q "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")"
log "cluster: $((CLUSTER_BYTES / 1000000)) MB (sum of pg_database_size)"

# --- one measured run --------------------------------------------------------------------------
# build_cmd VARIANT TOOL DIR: sets CMD to the tool's command line writing under DIR.
build_cmd() {
    local variant="$1" tool="$2" dir="$3"
    case "$tool" in
    walden)
        CMD=("$WALDEN" backup --source "$CONNINFO" --store "$dir" --cluster bench
            --checkpoint fast --include-wal)
        case "$variant" in
        zstd) CMD+=(--compress "zstd:$ZSTD_LEVEL") ;;
        server-zstd) CMD+=(--compress "server-zstd:$ZSTD_LEVEL") ;;
        esac
        ;;
    pg_basebackup)
        CMD=("$PGBIN/pg_basebackup" -d "$CONNINFO" -D "$dir/backup" -Ft -c fast -X fetch)
        case "$variant" in
        zstd) CMD+=("--compress=client-zstd:$ZSTD_LEVEL") ;;
        server-zstd) CMD+=("--compress=server-zstd:$ZSTD_LEVEL") ;;
        esac
        ;;
    esac
}

# run_one VARIANT TOOL ROUND POSITION [warmup]
run_one() {
    local variant="$1" tool="$2" round="$3" position="$4" warmup="${5:-}"
    local dir="$BACKUP_WORK/$tool" tag="$tool-$variant-r$round"
    local raw="$RAW"
    if [ -n "$warmup" ]; then
        tag="$tool-$variant-warmup$round"
        raw="$WORK/warmup.jsonl"
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    # Every run starts from the same state: the previous run's files are gone and on disk
    # (deletions committed), and the server has just checkpointed, so `-c fast` is cheap and equal.
    sync -f "$BACKUP_WORK"
    q "CHECKPOINT" >/dev/null
    build_cmd "$variant" "$tool" "$dir"
    echo "${CMD[*]}" >"$WORK/logs/$tag.cmd"
    python3 "$helper" run "$raw" tool="$tool" variant="$variant" round="$round" \
        position="$position" cluster_bytes="$CLUSTER_BYTES" out="$dir" log="$WORK/logs/$tag.log" \
        -- "${CMD[@]}" ||
        { tail -n 5 "$WORK/logs/$tag.log" >&2; warn "$tag failed or left no complete backup (log: $WORK/logs/$tag.log)"; }
    rm -rf "$dir"
    sync -f "$BACKUP_WORK"
}

# Interleave: each pair of runs alternates which tool goes first (sets ORDER).
pair=0
next_order() {
    local list=($TOOLS)
    if [ $((pair % 2)) = 1 ] && [ "${#list[@]}" = 2 ]; then
        ORDER="${list[1]} ${list[0]}"
    else
        ORDER="${list[*]}"
    fi
    pair=$((pair + 1))
}

# --- the runs ----------------------------------------------------------------------------------
first_variant="${VARIANTS%% *}"
for w in $(seq 1 "$WARMUP"); do
    log "warm-up $w (not measured): $first_variant"
    for tool in $TOOLS; do run_one "$first_variant" "$tool" "$w" 0 warmup; done
done

n_runs=$((ROUNDS * $(wc -w <<<"$TOOLS") * $(wc -w <<<"$VARIANTS")))
log "$n_runs runs ($ROUNDS rounds; tools: $TOOLS; variants: $VARIANTS; zstd level $ZSTD_LEVEL)"
for round in $(seq 1 "$ROUNDS"); do
    for variant in $VARIANTS; do
        log "round $round: $variant"
        next_order
        position=1
        for tool in $ORDER; do
            run_one "$variant" "$tool" "$round" "$position"
            position=$((position + 1))
        done
    done
done

# --- report ------------------------------------------------------------------------------------
BENCH_SERVER_VERSION="$("$PGBIN/postgres" --version)"
BENCH_PG_BASEBACKUP="$("$PGBIN/pg_basebackup" --version)"
BENCH_WALDEN="${WALDEN:-}"
BENCH_WALDEN_VERSION="$([ -n "${WALDEN:-}" ] && "$WALDEN" --version 2>/dev/null || true)"
BENCH_KERNEL="$(uname -r)"
BENCH_CPUS="$(nproc)"
BENCH_CLUSTER_BYTES="$CLUSTER_BYTES"
export BENCH_SERVER_VERSION BENCH_PG_BASEBACKUP BENCH_WALDEN BENCH_WALDEN_VERSION BENCH_KERNEL \
    BENCH_CPUS BENCH_CLUSTER_BYTES ROUNDS SCALE VARIANTS TOOLS ZSTD_LEVEL PG_ROOT BACKUP_ROOT
python3 "$helper" report "$RAW" "$OUT"
