#!/usr/bin/env bash
# walden end to end on throw-away data: a temporary PostgreSQL, `walden run` archiving it into
# a temporary store, a base backup, more writes, a point-in-time restore into a new data
# directory, that server started, and its data compared with what was committed before the
# target. Prints each step; removes everything it made when it ends (also on failure).
#
#   scripts/quickstart.sh                 # uses target/release binaries, building them if needed
#   PGBIN=/usr/lib/postgresql/16/bin scripts/quickstart.sh
#   KEEP=1 scripts/quickstart.sh          # keep the temporary directory for a look around
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

# --- PostgreSQL binaries --------------------------------------------------------------------
find_pgbin() {
    local d
    for d in "${PGBIN:-}" /usr/lib/postgresql/*/bin /usr/pgsql-*/bin "$repo"/.pg/*/bin; do
        [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { echo "$d"; return; }
    done
    local pgc
    pgc="$(command -v pg_config || true)"
    [ -n "$pgc" ] && [ -x "$("$pgc" --bindir)/initdb" ] && { "$pgc" --bindir; return; }
    return 1
}
PGBIN="$(find_pgbin)" || die "no PostgreSQL server binaries found: install postgresql (Debian: apt-get install postgresql) or set PGBIN"

# --- walden binaries ------------------------------------------------------------------------
WALDEN="${WALDEN:-$repo/target/release/walden}"
WALDEN_RESTORE="${WALDEN_RESTORE:-$repo/target/release/walden-restore}"
if [ ! -x "$WALDEN" ] || [ ! -x "$WALDEN_RESTORE" ]; then
    step "Building walden (cargo build --release)"
    (cd "$repo" && cargo build --release --quiet)
fi

# --- a temporary directory the postgres user can use -----------------------------------------
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the servers"
    RUN_AS=(runuser -u postgres --)
fi
work="$(mktemp -d /tmp/walden-quickstart.XXXXXX)"
chmod 0755 "$work"
mkdir -p "$work/bin"
# The restored server runs walden-restore as its restore_command: it must be able to execute it.
cp "$WALDEN" "$WALDEN_RESTORE" "$work/bin/"
chmod 0755 "$work/bin" "$work/bin/"*
WALDEN="$work/bin/walden"
WALDEN_RESTORE="$work/bin/walden-restore"
[ ${#RUN_AS[@]} -gt 0 ] && chown postgres: "$work"

daemon_pid=""
cleanup() {
    local rc=$?
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
    for d in "$work/restored" "$work/primary"; do
        [ -f "$d/postmaster.pid" ] && "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        info "kept $work"
    else
        rm -rf "$work"
    fi
    [ $rc = 0 ] || printf '\nquickstart: FAILED (exit %s)\n' "$rc" >&2
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
psql_p() { "${RUN_AS[@]}" "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -h "$work" -p "$1" -d "${3:-postgres}" -c "$2"; }

# --- 1. a primary -----------------------------------------------------------------------------
step "Starting a temporary PostgreSQL ($("$PGBIN/postgres" --version)) in $work/primary"
port="$(free_port)"
"${RUN_AS[@]}" "$PGBIN/initdb" -D "$work/primary" -U postgres -A trust >/dev/null
cat >>"$work/primary/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
wal_level = replica
max_wal_senders = 4
EOF
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
psql_p "$port" "CREATE ROLE walden LOGIN REPLICATION; GRANT pg_read_server_files TO walden;"
psql_p "$port" "CREATE DATABASE shop"
psql_p "$port" "CREATE DATABASE stock"
psql_p "$port" "CREATE TABLE orders (id int PRIMARY KEY, item text, at timestamptz DEFAULT now())" shop
psql_p "$port" "CREATE TABLE levels (item text PRIMARY KEY, qty int)" stock
info "databases shop and stock, role walden (REPLICATION)"

# --- 2. walden run ---------------------------------------------------------------------------
step "Starting walden run (store $work/store)"
cat >"$work/walden.toml" <<EOF
store = "$work/store"
min_free_space = "0"

[cluster.demo]
source = "host=$work port=$port user=walden dbname=postgres"
slot = "walden"
compression = "zstd"
backup.every = "24h"
backup.checkpoint = "fast"
retention.keep_backups = 3
EOF
"$WALDEN" check-config --config "$work/walden.toml" | sed 's/^/    /'
"$WALDEN" run --config "$work/walden.toml" >"$work/walden.log" 2>&1 &
daemon_pid=$!

# The daemon takes the cluster's first backup as soon as it streams.
for _ in $(seq 1 120); do
    n="$("$WALDEN" list --store "$work/store" --cluster demo --json 2>/dev/null |
        python3 -c 'import json,sys; print(sum(b["status"]=="complete" for b in json.load(sys.stdin)["backups"]))' 2>/dev/null || echo 0)"
    [ "$n" -ge 1 ] && break
    kill -0 "$daemon_pid" 2>/dev/null || { tail -20 "$work/walden.log" >&2; die "walden run stopped"; }
    sleep 0.5
done
[ "$n" -ge 1 ] || { tail -20 "$work/walden.log" >&2; die "no backup within 60 s"; }
info "walden is streaming WAL and took the first base backup:"
"$WALDEN" list --store "$work/store" --cluster demo | sed 's/^/    /'

# --- 3. writes, a target, more writes ---------------------------------------------------------
step "Writing data in both databases"
for i in $(seq 1 5); do
    psql_p "$port" "INSERT INTO orders (id, item) VALUES ($i, 'item-$i')" shop
    psql_p "$port" "INSERT INTO levels VALUES ('item-$i', 100 - $i)" stock
done
sleep 1.1
target="$(psql_p "$port" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")+00"
sleep 1.1
info "5 orders committed; the restore target is $target"
for i in $(seq 6 8); do
    psql_p "$port" "INSERT INTO orders (id, item) VALUES ($i, 'late-$i')" shop
    psql_p "$port" "UPDATE levels SET qty = 0" stock
done
info "3 more orders and a stock wipe-out committed after the target (the 'mistake')"
end_lsn="$(psql_p "$port" "SELECT pg_current_wal_insert_lsn()")"
for _ in $(seq 1 120); do
    done_="$(psql_p "$port" "SELECT count(*) FROM pg_stat_replication WHERE flush_lsn >= '$end_lsn'")"
    [ "$done_" = 1 ] && break
    sleep 0.25
done
[ "$done_" = 1 ] || die "walden did not report $end_lsn flushed"
info "walden has everything up to $end_lsn fsynced in its store"

# --- 4. point-in-time restore ------------------------------------------------------------------
step "Restoring the whole cluster to $target into $work/restored"
mkdir -p "$work/restored"
chmod 0700 "$work/restored"
[ ${#RUN_AS[@]} -gt 0 ] && chown postgres: "$work/restored"
"$WALDEN_RESTORE" restore --from "$work/store" --cluster demo --pgdata "$work/restored" \
    --target-time "$target" --target-action promote | sed 's/^/    /'

step "Starting the restored server"
rport="$(free_port)"
cat >>"$work/restored/postgresql.auto.conf" <<EOF
port = $rport
EOF
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$work/restored" -l "$work/restored.log" -w -t 120 start >/dev/null
for _ in $(seq 1 240); do
    [ "$(psql_p "$rport" "SELECT pg_is_in_recovery()" 2>/dev/null || echo t)" = f ] && break
    sleep 0.25
done
[ "$(psql_p "$rport" "SELECT pg_is_in_recovery()")" = f ] || die "the restored server did not finish recovery"
info "recovery finished; the server is open"

# --- 5. compare ----------------------------------------------------------------------------------
step "Comparing"
want_orders="1,2,3,4,5"
want_stock="95,96,97,98,99"
got_orders="$(psql_p "$rport" "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders" shop)"
got_stock="$(psql_p "$rport" "SELECT string_agg(qty::text, ',' ORDER BY qty) FROM levels" stock)"
info "shop.orders ids:  $got_orders   (expected $want_orders)"
info "stock.levels qty: $got_stock   (expected $want_stock)"
info "primary now has:  $(psql_p "$port" "SELECT count(*) FROM orders" shop) orders, qty $(psql_p "$port" "SELECT string_agg(qty::text, ',' ORDER BY qty) FROM levels" stock)"
[ "$got_orders" = "$want_orders" ] && [ "$got_stock" = "$want_stock" ] ||
    die "the restored data does not match what was committed before the target"
step "Success: both databases were restored consistently to $target"
