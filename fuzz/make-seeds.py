#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/seeds/<target>/ (committed; rerun after changing a format).

wal_verify seeds are slices of the real segments in fixtures/wal with the 32-byte header
fuzz_targets/wal_verify.rs reads; the others are hand-made protocol messages, connection
strings and history files.
"""
import os
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
SEEDS = FUZZ / "seeds"
PAGE = 8192
SEG = 1 << 20


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- wal_verify -------------------------------------------------------------------------
def wal_header(chunk_seed, segment, start, tli):
    # The file's timeline, from its name: a new timeline's first page may carry the old one.
    (magic,) = struct.unpack_from("<H", segment, 0)
    (sysid,) = struct.unpack_from("<Q", segment, 24)
    # Segment size 2^(20 + 0) = 1 MiB, as the fixtures were made.
    return struct.pack("<QHIBBQQ", chunk_seed, magic, tli, 0, 1, sysid, start)


def wal_seeds():
    for version in ("pg15", "pg16", "pg18"):
        d = ROOT / "fixtures" / "wal" / version
        files = sorted(p for p in d.iterdir() if len(p.name) == 24)
        segs = {p.name: p.read_bytes() for p in files}
        for i, (name, data) in enumerate(segs.items()):
            tli = int(name[:8], 16)
            segno = int(name[8:16], 16) * (0x1_0000_0000 // SEG) + int(name[16:], 16)
            base = segno * SEG
            # The segment's first pages, fed whole and in chunks.
            write("wal_verify", f"{version}-{name}-start", wal_header(0, data, base, tli) + data[: 5 * PAGE])
            write("wal_verify", f"{version}-{name}-start-chunked",
                  wal_header(0x9E3779B97F4A7C15 + i, data, base, tli) + data[: 3 * PAGE])
            # Across the boundary into the next segment of the same timeline.
            nxt = f"{name[:8]}{(segno + 1) // 4096:08X}{(segno + 1) % 4096:08X}"
            if nxt in segs:
                tail = data[SEG - 2 * PAGE:] + segs[nxt][: 2 * PAGE]
                write("wal_verify", f"{version}-{name}-into-next",
                      wal_header(0x2545F4914F6CDD1D + i, data, base + SEG - 2 * PAGE, tli) + tail)
            # Pages in the middle of a segment (reading starts mid-record).
            mid = 5 * PAGE
            write("wal_verify", f"{version}-{name}-middle",
                  wal_header(7 + i, data, base + mid, tli) + data[mid: mid + 3 * PAGE])
        # The switch record and the unused pages after it.
        manifest = (d / "MANIFEST").read_text()
        switch_end = int(manifest.split("switch record ends at: ")[1].split(";")[0].split("/")[1], 16)
        page = switch_end - switch_end % PAGE - PAGE
        name = next(n for n in segs if n.startswith("00000001") and int(n[16:], 16) == page // SEG)
        off = page % SEG
        data = segs[name]
        write("wal_verify", f"{version}-switch",
              wal_header(3, data, page, 1) + data[off: off + 4 * PAGE])


# --- frame_decode -------------------------------------------------------------------------
def msg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def xlogdata(start, data):
    return b"w" + struct.pack(">QQq", start, start + len(data), 800_000_000_000_000) + data


def keepalive(end, reply):
    return b"k" + struct.pack(">Qq", end, 800_000_000_000_000) + bytes([reply])


def error_body(severity, code, message):
    return (b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(message)
            + b"D" + cstr("detail") + b"H" + cstr("hint") + b"\0")


def row_description(names):
    body = struct.pack(">h", len(names))
    for n in names:
        body += cstr(n) + struct.pack(">IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def data_row(values):
    body = struct.pack(">h", len(values))
    for v in values:
        body += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    return msg(b"D", body)


def frame_seeds():
    startup = (msg(b"R", struct.pack(">i", 0))
               + msg(b"S", cstr("server_version") + cstr("16.11 (Debian 16.11-1)"))
               + msg(b"S", cstr("integer_datetimes") + cstr("on"))
               + msg(b"K", struct.pack(">ii", 4242, 99))
               + msg(b"Z", b"I"))
    identify = (row_description(["systemid", "timeline", "xlogpos", "dbname"])
                + data_row([b"7711098434148768794", b"1", b"0/9079F0", None])
                + msg(b"C", cstr("IDENTIFY_SYSTEM")) + msg(b"Z", b"I"))
    stream = (msg(b"W", struct.pack(">bh", 0, 0))
              + msg(b"d", xlogdata(0x900000, bytes(range(64))))
              + msg(b"d", keepalive(0x900040, 1))
              + msg(b"c", b"")
              + row_description(["next_tli", "next_tli_startpos"])
              + data_row([b"2", b"0/9000A0"])
              + msg(b"C", cstr("START_STREAMING")) + msg(b"C", cstr("COPY 0")) + msg(b"Z", b"I"))
    errors = (msg(b"N", error_body("WARNING", "01000", "careful"))
              + msg(b"E", error_body("FATAL", "28P01", "password authentication failed"))
              + msg(b"v", struct.pack(">ii", 0, 2) + cstr("_pq_.a") + cstr("_pq_.b")))
    auth = (msg(b"R", struct.pack(">i", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
            + msg(b"R", struct.pack(">i", 11) + b"r=abc,s=c2FsdA==,i=4096")
            + msg(b"R", struct.pack(">i", 12) + b"v=dmVyaWZpZXI=")
            + msg(b"R", struct.pack(">i", 5) + b"salt")
            + msg(b"R", struct.pack(">i", 3))
            + msg(b"H", struct.pack(">bhh", 0, 1, 0))
            + msg(b"G", struct.pack(">bhh", 0, 1, 0))
            + msg(b"I", b""))
    for name, body in (("startup", startup), ("identify", identify), ("stream", stream),
                       ("errors", errors), ("auth", auth)):
        write("frame_decode", f"{name}-whole", struct.pack("<Q", 0) + body)
        write("frame_decode", f"{name}-chunked", struct.pack("<Q", 0xDEADBEEF12345678) + body)
    for name, payload in (("xlogdata", xlogdata(0x900000, bytes(100))),
                          ("xlogdata-empty", xlogdata(0x1_0000_0000, b"")),
                          ("keepalive", keepalive(0x907A68, 0)),
                          ("keepalive-reply", keepalive(0x907A68, 1))):
        write("stream_message", name, payload)


# --- conninfo ---------------------------------------------------------------------------
def conninfo_seeds():
    strings = [
        "host=localhost port=5432 user=postgres dbname=postgres replication=true",
        "host=/tmp,db.example.com,[::1] port=5432,5433,5434 sslmode=verify-full sslrootcert=system",
        "hostaddr=127.0.0.1 host=pg.example.com application_name='my app' password='it''s \\' x'",
        "requiressl=1 connect_timeout=10 options='-c wal_sender_timeout=0' channel_binding=require",
        "postgresql://user:p%40ss@host1:5432,host2/db?sslmode=require&replication=database",
        "postgres://[2001:db8::1]:6543/postgres?application_name=x&ssl=true&target_session_attrs=any",
        "postgresql:///dbname?host=%2Fvar%2Frun%2Fpostgresql&port=5433",
        "dbname=postgres\0PGHOST=/var/run/postgresql\nPGPORT=5433\nPGUSER=replicator\nPGSSLMODE=prefer",
        "\0PGREQUIRESSL=1\nPGCONNECT_TIMEOUT=1\nPGAPPNAME=walden\nPGTARGETSESSIONATTRS=any",
        "service=foo",
    ]
    for i, s in enumerate(strings):
        write("conninfo", f"s{i}", s.encode())


# --- timeline_history -------------------------------------------------------------------
def history_seeds():
    text = (ROOT / "fixtures" / "wal" / "pg16" / "00000002.history").read_bytes()
    write("timeline_history", "fixture", struct.pack("<I", 2) + text)
    many = ("1\t0/9000A0\tno recovery target specified\n"
            "# comment\n\n"
            "2\t0/A000000\tat restore point \"before\"\n"
            "  5 1/0 before 2000-01-01 00:00:00+00\n")
    write("timeline_history", "many", struct.pack("<I", 9) + many.encode())
    write("timeline_history", "empty", struct.pack("<I", 1))


# --- text_values ------------------------------------------------------------------------
def text_seeds():
    texts = ["0/9079F0", "FFFFFFFF/FFFFFFFF", "000000010000000000000009",
             "00000002000000000000000A.zst.partial", "00000002.history", "16MB", "1GB",
             "1048576", "walden_slot_1", "16.11 (Debian 16.11-1.pgdg120+1)", "9.6.24",
             "18beta1", "7711098434148768794"]
    for i, t in enumerate(texts):
        write("text_values", f"t{i}", bytes([i % 11]) + t.encode())


# --- channel_binding ----------------------------------------------------------------------
def cert_seeds():
    """Self-signed certificates with each signature family (new keys each run: not committed)."""
    import subprocess
    import tempfile
    kinds = {
        "rsa-sha256": (["-newkey", "rsa:1024"], ["-sha256"]),
        "rsa-sha1": (["-newkey", "rsa:1024"], ["-sha1"]),
        "ec-sha384": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], ["-sha384"]),
        "rsa-pss": (["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:1024"],
                    ["-sha512", "-sigopt", "rsa_padding_mode:pss"]),
        "ed25519": (["-newkey", "ed25519"], []),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (key, sig) in kinds.items():
            out = Path(tmp) / name
            r = subprocess.run(["openssl", "req", "-x509", "-nodes", "-subj", "/CN=fuzz", "-days", "1",
                                *key, *sig, "-keyout", os.devnull, "-outform", "DER", "-out", str(out)],
                               capture_output=True)
            if r.returncode == 0:
                write("channel_binding", name, out.read_bytes())


if __name__ == "__main__":
    text_seeds()
    cert_seeds()
    wal_seeds()
    frame_seeds()
    conninfo_seeds()
    history_seeds()
    for t in sorted(os.listdir(SEEDS)):
        files = list((SEEDS / t).iterdir())
        print(t, len(files), "files,", sum(f.stat().st_size for f in files), "bytes")
