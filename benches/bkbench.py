#!/usr/bin/env python3
"""Measurement helper for backup_vs_pg_basebackup.sh (Python 3.11 standard library only).

Subcommands:
  run RAW key=value... -- CMD...
                 run CMD (stdout and stderr to log=FILE), measure it and append one JSON line to
                 RAW. Keys: tool, variant, round, position, cluster_bytes, out (the directory the
                 backup is written under), log. Exits 3 if the tool failed or left no complete
                 backup (a manifest beside the archive).
  report RAW OUT print the per-variant tables and the targets, write summary and runs as JSON

A run's wall time is from just before the tool is spawned to just after it is reaped; its CPU
time comes from the rusage wait4() returns for it (utime+stime of all its threads and of any
children it waited for). Peak RSS: ru_maxrss is not the tool's own when the tool stays small,
because Linux carries the high-water mark of the image a process had before exec() (here this
Python's, ~14 MiB, as subprocess spawns with vfork) into ru_maxrss. So VmHWM of
/proc/PID/status is also sampled every SAMPLE_MS while the tool runs; ru_maxrss is used when it
exceeds this Python's own VmHWM (then it can only be the tool's), the last sample otherwise.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

from recvbench import loadavg1  # same /proc reading as the receive benchmark

MIB = 1024**2
MB = 1000**2  # throughput is in MB/s (10^6 bytes), as in /work/shared/reference/anchors.md

TOOLS = ("walden", "pg_basebackup")


def tree_bytes(path):
    """Apparent size of every regular file under path, and how many there are."""
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
                files += 1
    return total, files


def complete(tool, out):
    """Whether the tool left a finished backup under out: a manifest beside the archive."""
    if tool == "walden":
        backups = os.path.join(out, "bench", "backups")
        try:
            ids = os.listdir(backups)
        except OSError:
            return False
        return any(
            os.path.isfile(os.path.join(backups, i, "backup.json"))
            and os.path.isfile(os.path.join(backups, i, "backup_manifest"))
            for i in ids
        )
    backup = os.path.join(out, "backup")
    return os.path.isfile(os.path.join(backup, "backup_manifest")) and any(
        os.path.isfile(os.path.join(backup, name)) for name in ("base.tar", "base.tar.zst")
    )


def vmhwm_kib(pid):
    """VmHWM of a live process in KiB, or None once it has exited (its memory is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class HwmSampler(threading.Thread):
    """Reads a process's VmHWM every interval seconds until stopped; keeps the largest."""

    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            value = vmhwm_kib(self.pid)
            if value is not None:
                self.peak_kib = max(self.peak_kib, value)
                self.samples += 1
            self.stopped.wait(self.interval)


def cmd_run(args):
    if "--" not in args:
        sys.exit("run: expected RAW key=value... -- CMD...")
    split = args.index("--")
    raw, opts, cmd = args[0], dict(a.split("=", 1) for a in args[1:split]), args[split + 1 :]
    load0 = loadavg1()
    interval = float(os.environ.get("SAMPLE_MS", "5")) / 1000
    with open(opts["log"], "ab") as log:
        t0 = time.monotonic_ns()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        sampler = HwmSampler(child.pid, interval)
        sampler.start()
        _pid, status, usage = os.wait4(child.pid, 0)
        t1 = time.monotonic_ns()
        sampler.stopped.set()
        sampler.join()
    # The most this Python's image can have put into ru_maxrss (its high-water mark only grows).
    own_hwm = vmhwm_kib(os.getpid()) or 0
    if usage.ru_maxrss > own_hwm:
        peak_kib, peak_source = usage.ru_maxrss, "rusage"
    else:
        peak_kib, peak_source = sampler.peak_kib, "sampled"
    child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = (t1 - t0) / 1e9
    cluster = int(opts["cluster_bytes"])
    out_bytes, out_files = tree_bytes(opts["out"])
    cpu_s = usage.ru_utime + usage.ru_stime
    done = complete(opts["tool"], opts["out"])
    run = {
        "variant": opts["variant"],
        "tool": opts["tool"],
        "round": int(opts["round"]),
        "position": int(opts["position"]),  # 1: ran first in its pair, 2: second
        "wall_s": wall_s,
        "throughput_mb_s": cluster / MB / wall_s if wall_s > 0 else None,
        "cpu_s": cpu_s,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "cpu_share": cpu_s / wall_s if wall_s > 0 else None,
        "peak_rss_kib": peak_kib,
        "peak_rss_source": peak_source,  # "rusage" (exact) or "sampled" (VmHWM every SAMPLE_MS)
        "hwm_samples": sampler.samples,
        "ru_maxrss_kib": usage.ru_maxrss,
        "cluster_bytes": cluster,
        "output_bytes": out_bytes,
        "output_files": out_files,
        "exit_code": child.returncode,
        "complete": done,
        "loadavg1": [load0, loadavg1()],
        "command": cmd,
    }
    with open(raw, "a") as f:
        f.write(json.dumps(run) + "\n")
    print(
        f"  {run['tool']:<13} {run['variant']:<11} round {run['round']}: {wall_s:6.2f} s, "
        f"{run['throughput_mb_s']:6.0f} MB/s, CPU {cpu_s:5.2f} s ({usage.ru_utime:.2f} user, "
        f"{usage.ru_stime:.2f} sys), peak RSS {peak_kib / 1024:6.1f} MiB ({peak_source}), "
        f"output {out_bytes / MIB:.0f} MiB in {out_files} files, exit {child.returncode}"
        + ("" if done else ", INCOMPLETE"),
        flush=True,
    )
    # The script warns about a failed or incomplete run; the report leaves it out.
    sys.exit(0 if child.returncode == 0 and done else 3)


# (key, title, unit, scale for display, format)
METRICS = [
    ("throughput_mb_s", "throughput (cluster bytes / wall time)", "MB/s", 1, ".0f"),
    ("wall_s", "wall time", "s", 1, ".2f"),
    ("cpu_s", "client CPU (user+sys)", "s", 1, ".2f"),
    ("user_s", "client user CPU", "s", 1, ".2f"),
    ("sys_s", "client system CPU", "s", 1, ".2f"),
    ("peak_rss_kib", "client peak RSS", "MiB", 1 / 1024, ".1f"),
    ("output_bytes", "bytes on disk (backup directory)", "MiB", 1 / MIB, ".0f"),
]

# Environment variables the script exports for the JSON's "config" object.
CONFIG_VARS = [
    "BENCH_SERVER_VERSION",
    "BENCH_PG_BASEBACKUP",
    "BENCH_WALDEN",
    "BENCH_WALDEN_VERSION",
    "BENCH_KERNEL",
    "BENCH_CPUS",
    "BENCH_CLUSTER_BYTES",
    "ROUNDS",
    "SCALE",
    "VARIANTS",
    "TOOLS",
    "ZSTD_LEVEL",
    "PG_ROOT",
    "BACKUP_ROOT",
]


def variants(runs):
    seen = []
    for r in runs:
        if r["variant"] not in seen:
            seen.append(r["variant"])
    return seen


def values(runs, variant, tool, key):
    return [
        r[key]
        for r in runs
        if r["variant"] == variant
        and r["tool"] == tool
        and r["exit_code"] == 0
        and r["complete"]
        and r[key] is not None
    ]


def med(xs):
    return statistics.median(xs) if xs else None


def cmd_report(args):
    raw, out = args[0], args[1]
    runs = []
    if os.path.exists(raw):
        with open(raw) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    config = {name.lower(): os.environ.get(name) for name in CONFIG_VARS}

    summary = {}
    for variant in variants(runs):
        summary[variant] = {}
        for key, *_ in METRICS:
            w = values(runs, variant, "walden", key)
            p = values(runs, variant, "pg_basebackup", key)
            wm, pm = med(w), med(p)
            summary[variant][key] = {
                "walden_median": wm,
                "pg_basebackup_median": pm,
                "walden_max": max(w) if w else None,
                "pg_basebackup_max": max(p) if p else None,
                "ratio": wm / pm if wm is not None and pm else None,
                "walden_rounds": w,
                "pg_basebackup_rounds": p,
            }

    targets = []
    for variant in summary:
        s = summary[variant]["throughput_mb_s"]
        ratio = s["ratio"]
        targets.append(
            {
                "target": "throughput, walden / pg_basebackup",
                "variant": variant,
                "value": ratio,
                "limit": ">= 1.0",
                "met": None if ratio is None else ratio >= 1.0,
            }
        )
        peak = summary[variant]["peak_rss_kib"]["walden_max"]
        peak_mib = None if peak is None else peak / 1024
        targets.append(
            {
                "target": "walden peak RSS MiB (max over rounds)",
                "variant": variant,
                "value": peak_mib,
                "limit": "<= 64",
                "met": None if peak_mib is None else peak_mib <= 64,
            }
        )

    def cell(v, scale, spec):
        return "-" if v is None else format(v * scale, spec)

    print()
    print(
        f"Cluster {int(os.environ.get('BENCH_CLUSTER_BYTES') or 0) / MB:.0f} MB; medians over "
        "rounds of successful runs; ratio = walden / pg_basebackup."
    )
    for variant in summary:
        print()
        print(f"{variant}")
        print(f"  {'metric':<46} {'walden':>10} {'pg_basebackup':>14} {'ratio':>7}")
        for key, title, unit, scale, spec in METRICS:
            s = summary[variant][key]
            print(
                f"  {title + ' [' + unit + ']':<46} {cell(s['walden_median'], scale, spec):>10} "
                f"{cell(s['pg_basebackup_median'], scale, spec):>14} {cell(s['ratio'], 1, '.3f'):>7}"
            )
    print()
    print("Targets")
    for t in targets:
        state = {True: "MET", False: "NOT MET", None: "n/a (missing data)"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {t['target']:<40} {t['variant']:<12} {value:>8} {t['limit']:<7} {state}")
    for r in runs:
        if r["exit_code"] != 0 or not r["complete"]:
            print(
                f"WARNING: {r['tool']} exited with status {r['exit_code']}, result "
                f"{'complete' if r['complete'] else 'incomplete'} ({r['variant']} round "
                f"{r['round']}): left out of the medians"
            )

    with open(out, "w") as f:
        json.dump({"config": config, "summary": summary, "targets": targets, "runs": runs}, f, indent=2)
        f.write("\n")
    print(f"\nraw numbers: {out}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    commands = {"run": cmd_run, "report": cmd_report}
    command = commands.get(sys.argv[1])
    if command is None:
        sys.exit(f"unknown subcommand {sys.argv[1]!r}\n{__doc__}")
    command(sys.argv[2:])


if __name__ == "__main__":
    main()
