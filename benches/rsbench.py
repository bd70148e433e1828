#!/usr/bin/env python3
"""Measurement helper for restore_vs_cp.sh (Python 3.11 standard library only).

Subcommands:
  conf PGDATA cp ARCHIVE     replace walden's restore_command in PGDATA/postgresql.auto.conf
                             by `cp ARCHIVE/%f %p`
  conf PGDATA spool DIR      add `--spool DIR` to walden's restore_command (prefetch variants)
  recover RAW key=value...   start the server on a restored data directory, time it from the
                             spawn to "archive recovery complete" in its log, stop it (SIGQUIT,
                             an immediate stop), append one JSON line to RAW. Keys: variant,
                             round, position, pgdata, log, pgbin, timeout, spool (optional).
                             Exits 3 if recovery did not complete.
  calls OUT key=value...     the per-call benchmark: N calls of each case, interleaved in
                             batches; appends every timing to OUT (JSON). Keys: n, batch, dest,
                             archive, plain, zstd, cluster, present, missing, walden_restore.
  report RAW CALLS OUT       print the recovery and per-call tables and the targets, write
                             summary and runs as JSON

Recovery time is wall-clock, from just before the postmaster is spawned (directly, with
setuid to postgres: no runuser or pg_ctl in between) to the moment this helper sees the line
"archive recovery complete" in the server log, which it polls every POLL_MS (10) ms.
"""

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

from recvbench import loadavg1  # same /proc reading as the receive benchmark

MIB = 1024**2

VARIANTS = ("cp", "walden-plain", "walden-zstd", "walden-plain-prefetch", "walden-zstd-prefetch")

# --- conf -----------------------------------------------------------------------------------------

RESTORE_LINE = re.compile(r"^restore_command = '((?:[^'\\]|''|\\.)*)'\s*$")


def conf_unquote(text):
    """A postgresql.conf string value, from between its quotes."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "'" and text[i + 1 : i + 2] == "'":
            out.append("'")
            i += 2
        elif c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def conf_quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def cmd_conf(args):
    pgdata, mode, path = args
    conf = os.path.join(pgdata, "postgresql.auto.conf")
    with open(conf) as f:
        lines = f.read().split("\n")
    found = [i for i, line in enumerate(lines) if RESTORE_LINE.match(line)]
    if len(found) != 1:
        sys.exit(f"conf: expected one restore_command line in {conf}, found {len(found)}")
    i = found[0]
    command = conf_unquote(RESTORE_LINE.match(lines[i]).group(1))
    if "%" in path:
        sys.exit("conf: the path must not contain %")
    if mode == "cp":
        # As PostgreSQL's documentation writes it.
        new = f"cp {shlex.quote(path)}/%f %p"
    elif mode == "spool":
        if not command.endswith(" %f %p") or "--prefetch" not in command:
            sys.exit(f"conf: no wal-fetch --prefetch command to add --spool to: {command}")
        # `walden-restore restore --prefetch` writes a --spool of its own (beside PGDATA):
        # replace it; wal-fetch refuses the option twice.
        words = shlex.split(command[: -len(" %f %p")])
        if "--spool" in words:
            at = words.index("--spool")
            del words[at : at + 2]
        new = shlex.join(words + ["--spool", path]) + " %f %p"
    else:
        sys.exit(f"conf: unknown mode {mode!r}")
    lines[i] = f"restore_command = {conf_quote(new)}"
    with open(conf, "w") as f:
        f.write("\n".join(lines))
    print(new)


# --- recover --------------------------------------------------------------------------------------

LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ")


def log_seconds(line):
    """Seconds of the day of a log line with the default prefix '%m [%p] ', or None."""
    m = LOG_TS.match(line)
    if not m:
        return None
    t = time.strptime(m.group(1).split(".")[0], "%Y-%m-%d %H:%M:%S")
    frac = float("0." + m.group(1).split(".")[1]) if "." in m.group(1) else 0.0
    return time.mktime(t) + frac


def prefetch_workers(spool):
    """PIDs of wal-prefetch processes working on this spool directory."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"wal-prefetch" in argv and spool.encode() in argv:
            pids.append(int(entry))
    return pids


def parse_log(text):
    info = {
        "restored": len(re.findall(r'restored log file "[^"]+" from archive', text)),
        "stop": None,
        "redo_elapsed_s": None,
        "redo_cpu_s": None,
        "log_recovery_s": None,
    }
    m = re.search(r"recovery stopping (?:after|before) WAL location \(LSN\) \"([0-9A-F/]+)\"", text)
    if m:
        info["stop"] = m.group(1)
    m = re.search(
        r"redo done at \S+ system usage: CPU: user: ([0-9.]+) s, system: ([0-9.]+) s, "
        r"elapsed: ([0-9.]+) s",
        text,
    )
    if m:
        info["redo_cpu_s"] = float(m.group(1)) + float(m.group(2))
        info["redo_elapsed_s"] = float(m.group(3))
    lines = text.splitlines()
    first = next((log_seconds(line) for line in lines if log_seconds(line) is not None), None)
    done = next((log_seconds(line) for line in lines if "archive recovery complete" in line), None)
    if first is not None and done is not None:
        info["log_recovery_s"] = done - first
    return info


def cmd_recover(args):
    opts = dict(a.split("=", 1) for a in args)
    pgdata, logpath = opts["pgdata"], opts["log"]
    timeout = float(opts.get("timeout", "900"))
    poll = float(os.environ.get("POLL_MS", "10")) / 1000
    spool = opts.get("spool") or None
    postgres = os.path.join(opts["pgbin"], "postgres")
    load0 = loadavg1()
    log = open(logpath, "wb")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/postgresql"}
    t0 = time.monotonic()
    server = subprocess.Popen(
        [postgres, "-D", pgdata],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        user="postgres",
        group="postgres",
        extra_groups=[],
        env=env,
        cwd="/",
        start_new_session=True,  # a Ctrl-C for the script reaches its cleanup, not the server
    )
    log.close()
    done_at = None
    seen = 0
    text = ""
    with open(logpath, "rb") as reader:
        while True:
            chunk = reader.read()
            if chunk:
                text += chunk.decode(errors="replace")
                if "archive recovery complete" in text[max(0, seen - 64) :]:
                    done_at = time.monotonic()
                    break
                seen = len(text)
            if server.poll() is not None or time.monotonic() - t0 > timeout:
                break
            time.sleep(poll)
    wall_s = None if done_at is None else done_at - t0
    # Immediate stop (pg_ctl -m immediate sends the same): the directory is thrown away.
    if server.poll() is None:
        server.send_signal(signal.SIGQUIT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with open(logpath, "rb") as f:
        text = f.read().decode(errors="replace")
    info = parse_log(text)
    # Detached prefetch workers may still be copying: let them finish before the spool goes.
    workers_left = 0
    if spool:
        deadline = time.monotonic() + 60
        while prefetch_workers(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in prefetch_workers(spool):
            workers_left += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    run = {
        "variant": opts["variant"],
        "round": int(opts["round"]),
        "position": int(opts["position"]),
        "wall_s": wall_s,
        "complete": done_at is not None,
        "exit_code": server.returncode,
        "caches_dropped": opts.get("dropped") == "1",
        "prefetch_workers_killed": workers_left,
        "loadavg1": [load0, loadavg1()],
        **info,
    }
    with open(opts["raw"], "a") as f:
        f.write(json.dumps(run) + "\n")
    redo = "-" if info["redo_elapsed_s"] is None else f"{info['redo_elapsed_s']:.2f} s"
    print(
        f"  {run['variant']:<22} round {run['round']}: "
        + ("INCOMPLETE" if wall_s is None else f"{wall_s:6.2f} s to end of recovery")
        + f" (redo {redo}, {info['restored']} files restored, stop at {info['stop']}, "
        f"load {load0:.1f})",
        flush=True,
    )
    sys.exit(0 if done_at is not None else 3)


# --- calls ----------------------------------------------------------------------------------------


def call_cases(opts):
    wr, dest = opts["walden_restore"], opts["dest"]
    present, missing = opts["present"], opts["missing"]
    fetch = [wr, "wal-fetch", "--cluster", opts["cluster"], "--from"]
    return {
        "true": (["/bin/true"], 0),  # the floor: spawning any process
        "cp-present": (["cp", os.path.join(opts["archive"], present), dest], 0),
        "walden-plain-present": (fetch + [opts["plain"], present, dest], 0),
        "walden-zstd-present": (fetch + [opts["zstd"], present, dest], 0),
        "cp-missing": (["cp", os.path.join(opts["archive"], missing), dest], 1),
        "walden-missing": (fetch + [opts["plain"], missing, dest], 1),
    }


def cmd_calls(args):
    out = args[0]
    opts = dict(a.split("=", 1) for a in args[1:])
    n, batch, dest = int(opts["n"]), int(opts["batch"]), opts["dest"]
    cases = call_cases(opts)
    devnull = os.open(os.devnull, os.O_RDWR)
    actions = [
        (os.POSIX_SPAWN_DUP2, devnull, 0),
        (os.POSIX_SPAWN_DUP2, devnull, 1),
        (os.POSIX_SPAWN_DUP2, devnull, 2),
    ]
    env = dict(os.environ)
    times = {name: [] for name in cases}
    bad = {name: 0 for name in cases}
    # Warm the page cache and the binaries for every case alike.
    for name, (argv, _want) in cases.items():
        for _ in range(3):
            try:
                os.unlink(dest)
            except FileNotFoundError:
                pass
            pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
            os.waitpid(pid, 0)
    order = list(cases)
    k = 0
    while any(len(times[c]) < n for c in cases):
        # Rotate which case goes first in each cycle of batches.
        cycle = order[k % len(order) :] + order[: k % len(order)]
        k += 1
        for name in cycle:
            argv, want = cases[name]
            for _ in range(min(batch, n - len(times[name]))):
                try:
                    os.unlink(dest)  # the server removes %p before every call, too
                except FileNotFoundError:
                    pass
                t0 = time.perf_counter_ns()
                pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
                _pid, status = os.waitpid(pid, 0)
                t1 = time.perf_counter_ns()
                code = os.waitstatus_to_exitcode(status)
                if code != want:
                    bad[name] += 1
                elif name != "true" and want == 0 and os.path.getsize(dest) != 16 * MIB:
                    bad[name] += 1
                times[name].append((t1 - t0) / 1e6)
        print(f"  per-call: {min(len(v) for v in times.values())}/{n}", end="\r", flush=True)
    print()
    try:
        os.unlink(dest)
    except FileNotFoundError:
        pass
    with open(out, "w") as f:
        json.dump(
            {"cases": {c: cases[c][0] for c in cases}, "times_ms": times, "unexpected": bad}, f
        )


# --- report ---------------------------------------------------------------------------------------

CONFIG_VARS = [
    "BENCH_SERVER_VERSION",
    "BENCH_WALDEN",
    "BENCH_WALDEN_RESTORE",
    "BENCH_WALDEN_VERSION",
    "BENCH_KERNEL",
    "BENCH_CPUS",
    "BENCH_WAL_BYTES",
    "BENCH_SEGMENTS",
    "BENCH_BACKUP_START",
    "BENCH_TARGET_LSN",
    "BENCH_ZSTD_BYTES",
    "ROUNDS",
    "SCALE",
    "WAL_MB",
    "VARIANTS",
    "PREFETCH",
    "CALLS",
    "BATCH",
    "DROP_CACHES",
    "PG_ROOT",
    "STORE_ROOT",
]


def med(xs):
    return statistics.median(xs) if xs else None


def quantile(xs, q):
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cmd_report(args):
    raw, calls_path, out = args
    runs = []
    if os.path.exists(raw):
        with open(raw) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    calls = None
    if os.path.exists(calls_path):
        with open(calls_path) as f:
            calls = json.load(f)
    config = {name.lower(): os.environ.get(name) for name in CONFIG_VARS}

    wal = int(os.environ.get("BENCH_WAL_BYTES") or 0)
    print()
    print(
        f"Recovery: {wal / MIB:.0f} MiB of WAL ({os.environ.get('BENCH_SEGMENTS')} segments) "
        f"from the backup's start to {os.environ.get('BENCH_TARGET_LSN')}, page cache "
        + ("dropped before every run" if os.environ.get("DROP_CACHES") == "1" else "not dropped")
        + "; time from postmaster spawn to \"archive recovery complete\"; medians over rounds."
    )
    summary = {"recovery": {}, "calls": {}}
    order = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    ok = {v: [r for r in runs if r["variant"] == v and r["complete"]] for v in order}
    cp = med([r["wall_s"] for r in ok.get("cp", [])])
    print(
        f"  {'variant':<22} {'rounds [s]':<24} {'median':>8} {'/ cp':>6} {'redo':>7} "
        f"{'redo CPU':>9} {'files':>6}"
    )
    for v in order:
        walls = [r["wall_s"] for r in ok[v]]
        m = med(walls)
        ratio = m / cp if m is not None and cp else None
        redo = med([r["redo_elapsed_s"] for r in ok[v] if r["redo_elapsed_s"] is not None])
        rcpu = med([r["redo_cpu_s"] for r in ok[v] if r["redo_cpu_s"] is not None])
        files = med([r["restored"] for r in ok[v]])
        summary["recovery"][v] = {
            "median_s": m,
            "rounds_s": walls,
            "ratio_to_cp": ratio,
            "redo_elapsed_median_s": redo,
            "redo_cpu_median_s": rcpu,
            "restored_files": files,
            "mb_per_s": wal / 1e6 / m if m else None,
        }

        def f(x, spec):
            return "-" if x is None else format(x, spec)

        print(
            f"  {v:<22} {', '.join(f'{w:.2f}' for w in walls):<24} {f(m, '.2f'):>8} "
            f"{f(ratio, '.3f'):>6} {f(redo, '.2f'):>7} {f(rcpu, '.2f'):>9} {f(files, '.0f'):>6}"
        )
    stops = {r["stop"] for r in runs if r["complete"]}
    if len(stops) > 1:
        print(f"WARNING: the runs stopped at different LSNs: {sorted(map(str, stops))}")
    for r in runs:
        if not r["complete"]:
            print(f"WARNING: {r['variant']} round {r['round']} did not complete recovery")

    if calls:
        times = calls["times_ms"]
        print()
        print(
            f"Per call ({len(times.get('cp-present', []))} calls each, interleaved in batches, "
            "spawned directly without a shell; ms):"
        )
        print(f"  {'case':<22} {'median':>8} {'p10':>8} {'p90':>8} {'/ cp':>6} {'unexpected':>10}")
        for name, xs in times.items():
            base = "cp-missing" if name.endswith("missing") else "cp-present"
            m = med(xs)
            ratio = m / med(times[base]) if name != "true" and times.get(base) else None
            summary["calls"][name] = {
                "median_ms": m,
                "p10_ms": quantile(xs, 0.1),
                "p90_ms": quantile(xs, 0.9),
                "ratio_to_cp": ratio,
                "unexpected": calls["unexpected"].get(name, 0),
            }
            print(
                f"  {name:<22} {m:8.2f} {quantile(xs, 0.1):8.2f} {quantile(xs, 0.9):8.2f} "
                f"{'-' if ratio is None else format(ratio, '.3f'):>6} "
                f"{calls['unexpected'].get(name, 0):>10}"
            )

    targets = []

    def target(name, value, limit):
        targets.append(
            {
                "target": name,
                "value": value,
                "limit": f"<= {limit}",
                "met": None if value is None else value <= limit,
            }
        )

    rec = summary["recovery"]
    for v in ("walden-plain", "walden-zstd"):
        if v in rec:
            target(f"recovery {v} / cp", rec[v]["ratio_to_cp"], 1.05)
    for v in ("walden-plain-prefetch", "walden-zstd-prefetch"):
        if v in rec:
            target(f"recovery {v} / cp", rec[v]["ratio_to_cp"], 0.95)
    c = summary["calls"]
    for name, limit in (
        ("walden-plain-present", 1.1),
        ("walden-zstd-present", 1.1),
        ("walden-missing", 1.0),
    ):
        if name in c:
            target(f"per call {name} / cp", c[name]["ratio_to_cp"], limit)
    print()
    print("Targets (issue 5)")
    for t in targets:
        state = {True: "MET", False: "NOT MET", None: "n/a (missing data)"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {t['target']:<42} {value:>7} {t['limit']:<7} {state}")

    with open(out, "w") as f:
        json.dump(
            {
                "config": config,
                "summary": summary,
                "targets": targets,
                "runs": runs,
                "calls": calls,
            },
            f,
            indent=2,
        )
        f.write("\n")
    print(f"\nraw numbers: {out}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    commands = {
        "conf": cmd_conf,
        "recover": cmd_recover,
        "calls": cmd_calls,
        "report": cmd_report,
    }
    command = commands.get(sys.argv[1])
    if command is None:
        sys.exit(f"unknown subcommand {sys.argv[1]!r}\n{__doc__}")
    command(sys.argv[2:])


if __name__ == "__main__":
    main()
