#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (not part of CI: too slow).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     default: all targets, 60 s each
#
# Installs cargo-fuzz (pinned below) if it is missing. Works on the stable toolchain with
# `--sanitizer none` (AddressSanitizer needs nightly's -Zsanitizer, and walden has no
# unsafe code for it to check); debug assertions and overflow checks are on, as in tests.
# Seeds come from fuzz/seeds/<target> (the WAL ones are cut from fixtures/wal by
# fuzz/make-seeds.py, which needs python3); the growing corpus lives in fuzz/corpus/<target>
# and crashes land in fuzz/artifacts/<target>, both git-ignored.
# Inputs that once crashed are kept in fuzz/regressions/<target> and replayed first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
target="${1:-all}"
seconds="${2:-60}"

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
fi

python3 fuzz/make-seeds.py >/dev/null

if [[ "$target" == all ]]; then
    mapfile -t targets < <(cargo fuzz list)
else
    targets=("$target")
fi

failed=()
for t in "${targets[@]}"; do
    echo "==> $t"
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    regressions=(fuzz/regressions/"$t"/*)
    if [[ -e "${regressions[0]}" ]] &&
        ! cargo fuzz run --sanitizer none "$t" "${regressions[@]}" >"fuzz/regressions-$t.log" 2>&1; then
        echo "==> $t: an input in fuzz/regressions/$t still crashes (see fuzz/regressions-$t.log)"
        grep -m1 -A1 "panicked at" "fuzz/regressions-$t.log" || true
        failed+=("$t")
        continue
    fi
    rm -f "fuzz/regressions-$t.log"
    if cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1; then
        echo "==> $t: no crash in $seconds s"
    else
        echo "==> $t: CRASH (input in fuzz/artifacts/$t)"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "==> failed: ${failed[*]}"
    exit 1
fi
echo "==> all fuzz targets ran without a crash"
