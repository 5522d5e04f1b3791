#!/usr/bin/env python3
"""How long cache reconciliation takes for a large cache (issue 5: "seconds,
not minutes, for 100k files").

    python3 benches/reconcile.py                # 100k files
    python3 benches/reconcile.py --files 20000  # smaller

Writes FILES small content-addressed files under a fresh cache directory,
then times `pullthrough gc --json` (the same reconciliation the server runs
in the background at start-up) twice:

  adopt   no index entries: every file is hashed and adopted (an index that
          was lost or set aside as corrupt);
  verify  every file has its entry: sizes are checked, nothing is hashed
          (a normal restart).

Reports wall time and peak RSS of each, as a markdown table on stdout.
Python 3 standard library only; nothing is left running.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_files(blobs, count, size):
    for i in range(count):
        data = os.urandom(size - 8) + i.to_bytes(8, "little")
        hex_digest = hashlib.sha256(data).hexdigest()
        shard = os.path.join(blobs, hex_digest[:2])
        os.makedirs(shard, exist_ok=True)
        with open(os.path.join(shard, hex_digest), "wb") as f:
            f.write(data)


def timed_gc(binary, cache):
    """Runs `gc --json` once; returns (seconds, peak RSS in MiB, report)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(
            [binary, "gc", "--cache-dir", cache, "--json"],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        # wait4 gives this child's own peak RSS (KiB), not the maximum
        # over every child so far.
        deadline = started + 600
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                sys.exit("gc took more than 600 s")
            time.sleep(0.01)
        seconds = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"gc failed with status {status}")
        child.returncode = 0
        out.seek(0)
        report = json.load(out)
    return seconds, usage.ru_maxrss / 1024, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=4096, help="bytes per file")
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "pullthrough"))
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} not found: run cargo build --release first")

    work = tempfile.mkdtemp(prefix="pullthrough-reconcile-")
    try:
        cache = os.path.join(work, "cache")
        started = time.monotonic()
        write_files(os.path.join(cache, "blobs", "sha256"), args.files, args.size)
        print(f"wrote {args.files} files in {time.monotonic() - started:.1f} s", file=sys.stderr)
        rows = []
        for phase in ("adopt", "verify"):
            seconds, rss, report = timed_gc(args.binary, cache)
            r = report["reconcile"]
            if r["entries"] != args.files:
                sys.exit(f"{phase}: reconciliation counted {r['entries']} entries, not {args.files}")
            rows.append((phase, seconds, rss, r["adopted"]))
        print(f"- command: `python3 benches/reconcile.py --files {args.files} --size {args.size}`")
        print(f"- binary: `{args.binary}`; {os.cpu_count()} CPUs")
        print()
        print("| phase | files | adopted (hashed) | wall time | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        for phase, seconds, rss, adopted in rows:
            print(f"| {phase} | {args.files} | {adopted} | {seconds:.2f} s | {rss:.1f} MiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
