#!/usr/bin/env bash
# The one test command: installs the PostgreSQL test servers (scripts/install-postgres.sh), then
# checks formatting, runs clippy with warnings denied, and runs every test target.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh harness_smoke`).
# With CI set, the proto-tests fail unless PostgreSQL 15, 16 and 18 are all installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    local name="$1"
    shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    echo "==> $name: ok ($((SECONDS - start)) s)"
}

# rustfmt and clippy: add them when missing; without network for rustup, skip with a note.
have_component() { cargo "$1" --version >/dev/null 2>&1; }
for component in fmt:rustfmt clippy:clippy; do
    cmd="${component%%:*}"
    if ! have_component "$cmd"; then
        rustup component add "${component#*:}" || true
    fi
done

step "install PostgreSQL 15/16/18" bash scripts/install-postgres.sh

if have_component fmt; then
    step "cargo fmt --check" cargo fmt --all -- --check
else
    echo "==> SKIPPED cargo fmt: rustfmt is not installed and rustup could not add it"
fi
if have_component clippy; then
    step "cargo clippy" cargo clippy --all-targets -- -D warnings
else
    echo "==> SKIPPED cargo clippy: clippy is not installed and rustup could not add it"
fi

# Test servers copy a ~40 MB data directory each: on a tmpfs that is several times faster
# than a disk. Use /dev/shm when it is a tmpfs with room, unless the caller chose a directory.
if [ -z "${WALDEN_TEST_TMPDIR:-}" ] && [ "$(stat -f -c %T /dev/shm 2>/dev/null || true)" = tmpfs ]; then
    free_kb="$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')"
    if [ "${free_kb:-0}" -ge $((2 * 1024 * 1024)) ]; then
        export WALDEN_TEST_TMPDIR=/dev/shm
    fi
fi
echo "==> test servers under ${WALDEN_TEST_TMPDIR:-/tmp}"

step "cargo test" cargo test --all-targets "$@"
