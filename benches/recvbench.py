#!/usr/bin/env python3
"""Measurement helper for receive_vs_pg_receivewal.sh (Python 3.11 standard library only).

Subcommands:
  snap PID                 one JSON line: CPU ticks, write_bytes, VmHWM/VmRSS of a live process
  lag APP OUT              every INTERVAL s until SIGTERM, append "write_lag flush_lag" byte
                           differences (pg_current_wal_lsn() minus the receiver's positions in
                           pg_stat_replication for application_name APP) to OUT
  record ...               turn one run's raw measurements into a JSON line appended to RAW
  report RAW OUT           print the per-metric tables, write the summary and runs as JSON
  lsn-sub A B              A minus B in bytes, for two LSNs in text form (X/Y)

psql is found in $PGBIN and connects with the PG* environment variables the script exports.
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

GIB = 1024**3
MIB = 1024**2


def lsn_to_int(text):
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def read_proc(pid):
    """CPU ticks (utime+stime of all threads), write_bytes, VmHWM/VmRSS (KiB), thread count."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    utime, stime = int(fields[11]), int(fields[12])
    io = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            io[key.strip()] = int(value)
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key.strip()] = value.strip()

    def kib(name):
        value = status.get(name, "0 kB").split()
        return int(value[0]) if value else 0

    return {
        "utime_ticks": utime,
        "stime_ticks": stime,
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "write_bytes": io.get("write_bytes", 0),
        "cancelled_write_bytes": io.get("cancelled_write_bytes", 0),
        "wchar": io.get("wchar", 0),
        "vmhwm_kib": kib("VmHWM"),
        "vmrss_kib": kib("VmRSS"),
        "threads": int(status.get("Threads", "1")),
        "time": time.monotonic(),
        "loadavg1": loadavg1(),
    }


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def psql_query(sql):
    psql = os.path.join(os.environ["PGBIN"], "psql")
    out = subprocess.run(
        [psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.strip()


def cmd_snap(args):
    print(json.dumps(read_proc(int(args[0]))))


def cmd_lag(args):
    app, out = args[0], args[1]
    interval = float(os.environ.get("LAG_INTERVAL", "1"))
    stop = False

    def on_term(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sql = (
        "SELECT pg_current_wal_lsn() - write_lsn, pg_current_wal_lsn() - flush_lsn "
        "FROM pg_stat_replication WHERE application_name = '" + app.replace("'", "''") + "'"
    )
    with open(out, "a") as f:
        next_at = time.monotonic()
        while not stop:
            try:
                row = psql_query(sql)
            except (subprocess.SubprocessError, OSError):
                row = ""
            if row and "|" in row:
                write_lag, flush_lag = row.splitlines()[0].split("|")
                if write_lag and flush_lag:
                    f.write(f"{max(0, int(float(write_lag)))} {max(0, int(float(flush_lag)))}\n")
                    f.flush()
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0 and not stop:
                time.sleep(delay)


def parse_pgbench(path):
    tps = latency = transactions = None
    with open(path) as f:
        text = f.read()
    m = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M)
    if m:
        tps = float(m.group(1))
    m = re.search(r"^latency average = ([0-9.]+) ms", text, re.M)
    if m:
        latency = float(m.group(1))
    m = re.search(r"^number of transactions actually processed: ([0-9]+)", text, re.M)
    if m:
        transactions = int(m.group(1))
    return tps, latency, transactions


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def cmd_record(args):
    opts = dict(a.split("=", 1) for a in args)
    snap0 = json.loads(opts["snap0"])
    snap1 = json.loads(opts["snap1"])
    wal_bytes = lsn_to_int(opts["lsn1"]) - lsn_to_int(opts["lsn0"])
    ticks = (snap1["utime_ticks"] + snap1["stime_ticks"]) - (
        snap0["utime_ticks"] + snap0["stime_ticks"]
    )
    clk = snap1["clk_tck"]
    cpu_s = ticks / clk
    user_s = (snap1["utime_ticks"] - snap0["utime_ticks"]) / clk
    sys_s = (snap1["stime_ticks"] - snap0["stime_ticks"]) / clk
    disk = snap1["write_bytes"] - snap0["write_bytes"]
    tps, latency, transactions = parse_pgbench(opts["pgbench_log"])
    write_lags, flush_lags = [], []
    if os.path.exists(opts["lag_file"]):
        with open(opts["lag_file"]) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    write_lags.append(int(parts[0]))
                    flush_lags.append(int(parts[1]))
    run = {
        "mode": opts["mode"],
        "receiver": opts["receiver"],
        "round": int(opts["round"]),
        "clients": int(opts["clients"]),
        "duration_s": int(opts["duration"]),
        "wal_bytes": wal_bytes,
        "cpu_s": cpu_s,
        "user_s": user_s,
        "sys_s": sys_s,
        "cpu_s_per_gib": cpu_s / (wal_bytes / GIB) if wal_bytes > 0 else None,
        # Synchronous mode costs per commit: this does not move with the WAL per transaction
        # (full-page images), which makes CPU per GiB vary between rounds of the same binary.
        "cpu_us_per_txn": cpu_s * 1e6 / transactions if transactions else None,
        "disk_write_bytes": disk,
        "disk_bytes_per_wal_byte": disk / wal_bytes if wal_bytes > 0 else None,
        "peak_rss_kib": snap1["vmhwm_kib"],
        "threads": snap1["threads"],
        "window_s": snap1["time"] - snap0["time"],
        # Zeros after the switch record that complete the last segment (streamed like any WAL).
        "switch_padding_bytes": max(0, lsn_to_int(opts["lsn1"]) - lsn_to_int(opts["switch_lsn"]))
        if opts["switch_lsn"]
        else 0,
        "catchup_s": int(opts["catchup_ms"]) / 1000,
        # The machine's 1-minute load average at the window's start and end (noise diagnosis).
        "loadavg1": [snap0.get("loadavg1"), snap1.get("loadavg1")],
        "tps": tps,
        "latency_ms": latency,
        "transactions": transactions,
        "lag_samples": len(flush_lags),
        "write_lag_median_bytes": statistics.median(write_lags) if write_lags else None,
        "write_lag_p95_bytes": percentile(write_lags, 95) if write_lags else None,
        "flush_lag_median_bytes": statistics.median(flush_lags) if flush_lags else None,
        "flush_lag_p95_bytes": percentile(flush_lags, 95) if flush_lags else None,
        "exit_code": int(opts["exit_code"]),
        "segment_matches_server": {"yes": True, "no": False}.get(opts["segment_check"]),
    }
    with open(opts["raw"], "a") as f:
        f.write(json.dumps(run) + "\n")
    # One progress line for the person watching.
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    print(
        f"  {run['receiver']:<13} {run['mode']:<5} c={run['clients']} round {run['round']}: "
        f"WAL {wal_bytes / MIB:.0f} MiB, CPU {cpu_s:.2f} s ({fmt(run['cpu_s_per_gib'], '.2f')} s/GiB, "
        f"{sys_s:.2f} sys), disk {fmt(run['disk_bytes_per_wal_byte'], '.2f')}x WAL, "
        f"peak RSS {run['peak_rss_kib'] / 1024:.1f} MiB, TPS {fmt(tps, '.0f')}, "
        f"flush lag med {fmt(run['flush_lag_median_bytes'] and run['flush_lag_median_bytes'] / MIB, '.2f')} MiB"
    )


# (key, title, unit, how values are scaled for display, format)
METRICS = [
    ("cpu_s_per_gib", "CPU (user+sys) per GiB of WAL", "s/GiB", 1, ".2f"),
    ("cpu_us_per_txn", "CPU (user+sys) per pgbench transaction", "µs", 1, ".1f"),
    ("disk_bytes_per_wal_byte", "disk bytes written per WAL byte", "x", 1, ".3f"),
    ("peak_rss_kib", "peak RSS (VmHWM)", "MiB", 1 / 1024, ".1f"),
    ("tps", "pgbench TPS", "tps", 1, ".0f"),
    ("flush_lag_median_bytes", "flush lag, median of 1 s samples", "MiB", 1 / MIB, ".2f"),
    ("flush_lag_p95_bytes", "flush lag, p95 of 1 s samples", "MiB", 1 / MIB, ".2f"),
    ("write_lag_median_bytes", "write lag, median of 1 s samples", "MiB", 1 / MIB, ".2f"),
    ("sys_s", "system CPU seconds in the window", "s", 1, ".2f"),
    ("wal_bytes", "WAL bytes in the window", "MiB", 1 / MIB, ".0f"),
]

# Environment variables the script exports for the JSON's "config" object.
CONFIG_VARS = [
    "BENCH_SERVER_VERSION",
    "BENCH_PG_RECEIVEWAL",
    "BENCH_WALDEN",
    "BENCH_WALDEN_VERSION",
    "BENCH_KERNEL",
    "BENCH_CPUS",
    "ROUNDS",
    "DURATION",
    "WARMUP",
    "SCALE",
    "ASYNC_CLIENTS",
    "SYNC_CLIENTS",
    "STATUS_INTERVAL",
    "WALDEN_STATUS_INTERVAL",
    "WALDEN_ARGS",
    "PG_ROOT",
    "RECV_ROOT",
    "SYNC_SWITCH",
    "SEED",
]


def groups(runs):
    """(mode, clients) pairs in the order they first appear."""
    seen = []
    for r in runs:
        key = (r["mode"], r["clients"])
        if key not in seen:
            seen.append(key)
    return seen


def values(runs, mode, clients, receiver, key):
    return [
        r[key]
        for r in runs
        if r["mode"] == mode
        and r["clients"] == clients
        and r["receiver"] == receiver
        and r.get(key) is not None
    ]


def med(xs):
    return statistics.median(xs) if xs else None


def cmd_report(args):
    raw, out = args[0], args[1]
    runs = []
    with open(raw) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    config = {name.lower(): os.environ.get(name) for name in CONFIG_VARS}
    config["server_settings"] = {
        "shared_buffers": "1GB",
        "max_wal_size": "4GB",
        "checkpoint_timeout": "1h",
        "autovacuum": "off",
        "wal_level": "replica",
    }

    summary = {}
    for mode, clients in groups(runs):
        label = f"{mode} c={clients}"
        summary[label] = {}
        for key, *_ in METRICS:
            w = values(runs, mode, clients, "walden", key)
            p = values(runs, mode, clients, "pg_receivewal", key)
            wm, pm = med(w), med(p)
            summary[label][key] = {
                "walden_median": wm,
                "pg_receivewal_median": pm,
                "walden_max": max(w) if w else None,
                "pg_receivewal_max": max(p) if p else None,
                "ratio": wm / pm if wm is not None and pm else None,
                "walden_rounds": w,
                "pg_receivewal_rounds": p,
            }

    targets = []

    def target(name, label, key, what, limit, op):
        s = summary.get(label, {}).get(key)
        if s is None:
            return
        value = s["ratio"] if what == "ratio" else s[what]
        if value is not None and key == "peak_rss_kib":
            value = value / 1024
        met = None
        if value is not None:
            met = value <= limit if op == "<=" else value >= limit
        targets.append(
            {"target": name, "group": label, "value": value, "limit": f"{op} {limit}", "met": met}
        )

    for mode, clients in groups(runs):
        label = f"{mode} c={clients}"
        if mode == "async":
            target("async CPU/GiB, walden / pg_receivewal", label, "cpu_s_per_gib", "ratio", 0.6, "<=")
        else:
            target("sync CPU/GiB, walden / pg_receivewal", label, "cpu_s_per_gib", "ratio", 0.8, "<=")
            target("sync TPS, walden / pg_receivewal --synchronous", label, "tps", "ratio", 1.0, ">=")
        target("walden disk bytes per WAL byte (median)", label, "disk_bytes_per_wal_byte", "walden_median", 1.05, "<=")
        target("walden peak RSS MiB (max over rounds)", label, "peak_rss_kib", "walden_max", 20, "<=")

    # --- tables ---------------------------------------------------------------------------
    def cell(v, scale, spec):
        return "-" if v is None else format(v * scale, spec)

    print()
    print("Medians over rounds; ratio = walden / pg_receivewal.")
    for key, title, unit, scale, spec in METRICS:
        rows = [(label, summary[label][key]) for label in summary]
        if all(s["walden_median"] is None and s["pg_receivewal_median"] is None for _, s in rows):
            continue
        print()
        print(f"{title} [{unit}]")
        print(f"  {'run':<12} {'walden':>12} {'pg_receivewal':>14} {'ratio':>8}")
        for label, s in rows:
            if s["walden_median"] is None and s["pg_receivewal_median"] is None:
                continue
            print(
                f"  {label:<12} {cell(s['walden_median'], scale, spec):>12} "
                f"{cell(s['pg_receivewal_median'], scale, spec):>14} {cell(s['ratio'], 1, '.3f'):>8}"
            )
    print()
    print("Targets")
    for t in targets:
        state = {True: "MET", False: "NOT MET", None: "n/a (no walden data)"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {t['target']:<48} {t['group']:<10} {value:>8} {t['limit']:<8} {state}")
    bad_exit = [r for r in runs if r["exit_code"] != 0]
    mismatched = [r for r in runs if r["segment_matches_server"] is False]
    for r in bad_exit:
        print(f"WARNING: {r['receiver']} exited with status {r['exit_code']} ({r['mode']} c={r['clients']} round {r['round']})")
    for r in mismatched:
        print(f"WARNING: {r['receiver']}'s last segment differs from the server's ({r['mode']} c={r['clients']} round {r['round']})")

    with open(out, "w") as f:
        json.dump({"config": config, "summary": summary, "targets": targets, "runs": runs}, f, indent=2)
        f.write("\n")
    print(f"\nraw numbers: {out}")


def cmd_lsn_sub(args):
    print(lsn_to_int(args[0]) - lsn_to_int(args[1]))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    commands = {
        "snap": cmd_snap,
        "lag": cmd_lag,
        "record": cmd_record,
        "report": cmd_report,
        "lsn-sub": cmd_lsn_sub,
    }
    command = commands.get(sys.argv[1])
    if command is None:
        sys.exit(f"unknown subcommand {sys.argv[1]!r}\n{__doc__}")
    command(sys.argv[2:])


if __name__ == "__main__":
    main()
