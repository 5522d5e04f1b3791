#!/usr/bin/env python3
"""Many tags and blobs (issue 16): pullthrough on a cache of up to a million
small blobs and a hundred thousand tags.

    cargo bench --bench bigcache_gen --no-run    # builds the generator
    cargo build --release
    python3 benches/bigcache.py                              # 100k/10k, 300k/30k, 1M/100k
    python3 benches/bigcache.py --sizes 20000:2000 --runs 1  # smoke run

Per size (BLOBS:TAGS), the generator (benches/bigcache_gen.rs, the crate's
own index code) writes BLOBS blobs of --blob-size bytes and TAGS tags, each
with its own manifest, into a fresh cache dir under --work. Then, --runs
times, on that same cache:

  ready     pullthrough serve started; /readyz polled every 10 ms: the time
            to its first 200 (reconciliation goes on in the background);
  RSS       VmRSS when ready, and after the log says "cache reconciled";
  lookups   --lookups GETs of random tags on one keep-alive connection
            (every answer's Docker-Content-Digest checked against the
            generator's manifest), once right after reconciliation (index
            reads) and again for the same tags (answered from memory);
            p50/p99 latency;
  stats     `pullthrough cache stats --json` wall time with the mirror
            running (through its API) and with it stopped (offline), its
            counts checked against what was written.

Then one eviction pass per run: the mirror started with max_size at 90% of
the cache; the pass's duration is the `millis` of its "evicted least
recently used content" log line, and `cache stats` afterwards must show
usage under the low-water mark (90% of max_size).

The upstream is a stub on 127.0.0.1 that answers 503 and counts requests:
every answer above must come from the cache (the stub must see none).
Peak RSS (VmHWM) of the mirror over each run is reported too.

Reuses benches/run.py (processes, RSS, load, reporting helpers); 127.0.0.1
only; every process stopped by PID; every loop bounded in count and time;
the work dir is deleted at the end.
"""

import argparse
import glob
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402
from run import PROCS, REPO_ROOT, log  # noqa: E402

STEP_LIMIT = 900.0


class StubUpstream:
    """Answers every request 503 and counts them: a bench that should be
    served from the cache must leave it at zero."""

    def __init__(self):
        count = self.count = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                count[0] += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def generator_binary(explicit):
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO_ROOT, "target"))
    found = [p for p in glob.glob(os.path.join(target, "release", "deps", "bigcache_gen-*"))
             if os.access(p, os.X_OK) and not p.endswith(".d")]
    if not found:
        sys.exit("no bigcache_gen binary: run cargo bench --bench bigcache_gen --no-run")
    return max(found, key=os.path.getmtime)


def generate(gen, cache, blobs, tags, blob_size):
    started = time.monotonic()
    out = subprocess.run([gen, cache, str(blobs), str(tags), str(blob_size), run.ACCEPT],
                         stdout=subprocess.PIPE, check=True, timeout=STEP_LIMIT).stdout
    written = json.loads(out)
    written["wall_s"] = time.monotonic() - started
    return written


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


class Mirror:
    """One `pullthrough serve` on the generated cache."""

    def __init__(self, binary, work, cache, upstream_port, max_size=None):
        self.port = run.free_port()
        self.n = len(os.listdir(work))
        self.logpath = os.path.join(work, "serve-%d.log" % self.n)
        cfg = os.path.join(work, "serve-%d.toml" % self.n)
        with open(cfg, "w") as f:
            f.write('listen = "127.0.0.1:%d"\ncache_dir = "%s"\n' % (self.port, cache))
            if max_size:
                f.write("max_size = \"%dB\"\n" % max_size)
            f.write('[[upstream]]\nurl = "http://127.0.0.1:%d"\ntag_ttl = "6h"\n' % upstream_port)
        env = dict(os.environ, RUST_LOG="info")
        self.started = time.monotonic()
        self.proc = PROCS.start("pullthrough", [binary, "serve", "--config", cfg],
                                self.logpath, env=env)

    def wait_ready(self):
        """Seconds from spawn to the first /readyz 200, polled every 10 ms."""
        deadline = self.started + STEP_LIMIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pullthrough exited with %s; log %s"
                                   % (self.proc.returncode, self.logpath))
            try:
                st, _, _ = run.http_get(self.port, "/readyz", timeout=2.0)
                if st == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("not ready after %.0f s" % STEP_LIMIT)

    def wait_log(self, pattern, after=0):
        """The first log line matching `pattern` (a regex) past offset `after`."""
        deadline = time.monotonic() + STEP_LIMIT
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            with open(self.logpath, errors="replace") as f:
                f.seek(after)
                for line in f:
                    if rx.search(line):
                        return line
            if self.proc.poll() is not None:
                raise RuntimeError("pullthrough exited; log %s" % self.logpath)
            time.sleep(0.05)
        raise RuntimeError("no %r in the log after %.0f s" % (pattern, STEP_LIMIT))

    def rss_mib(self, key="VmRSS"):
        kb = run.proc_status_kb(self.proc.pid, key)
        return None if kb is None else kb / 1024.0

    def stop(self):
        PROCS.stop(self.proc, timeout=30.0)


def field(line, name):
    m = re.search(r"\b%s=(\d+)" % name, line)
    return int(m.group(1)) if m else None


def expected_digest(j, cache_blobs, blob_size):
    """The digest of tag j's manifest, rebuilt as the generator builds it."""
    blob = lambda i: (b"bigcache blob %d\n" % i).ljust(blob_size, b".")  # noqa: E731
    n = cache_blobs

    def desc(k, media_type):
        data = blob(k % n)
        return '{"mediaType":"%s","digest":"sha256:%s","size":%d}' % (
            media_type, hashlib.sha256(data).hexdigest(), len(data))
    layers = ",".join(desc(j * 4 + l, "application/vnd.oci.image.layer.v1.tar") for l in (1, 2, 3))
    text = ('{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s],'
            '"annotations":{"bench.tag":"%d"}}') % (
        run.OCI_MANIFEST, desc(j * 4, "application/vnd.oci.image.config.v1+json"), layers, j)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def lookups(port, tags, picks, blobs, blob_size):
    """GETs each picked tag on one keep-alive connection; latencies in ms."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = []
    try:
        for j in picks:
            path = "/v2/bench/r%d/manifests/t%d" % (j // 10, j % 10)
            t0 = time.perf_counter()
            c.request("GET", path, headers={"Accept": run.ACCEPT})
            r = c.getresponse()
            body = r.read()
            lat.append((time.perf_counter() - t0) * 1000.0)
            digest = r.getheader("Docker-Content-Digest")
            if r.status != 200 or digest != "sha256:" + hashlib.sha256(body).hexdigest():
                raise RuntimeError("%s: status %d, digest %s" % (path, r.status, digest))
            if len(lat) <= 50 and digest != expected_digest(j, blobs, blob_size):
                raise RuntimeError("%s: served %s, not the generated manifest" % (path, digest))
    finally:
        c.close()
    lat.sort()
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def cache_stats(binary, cache):
    t0 = time.monotonic()
    out = subprocess.run([binary, "cache", "stats", "--cache-dir", cache, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=STEP_LIMIT)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError("cache stats failed: %s" % out.stderr.decode(errors="replace"))
    return wall, json.loads(out.stdout)


def check_stats(stats, written, where):
    got = (stats["blobs"], stats["manifests"], stats["tags"], stats["bytes"])
    want = (written["blobs"], written["manifests"], written["tags"], written["bytes"])
    if got != want:
        raise RuntimeError("cache stats (%s) says %s, generator wrote %s" % (where, got, want))


def serve_run(args, binary, work, cache, written, upstream, rnd):
    m = Mirror(binary, work, cache, upstream.port)
    row = {}
    try:
        row["ready_s"] = m.wait_ready()
        row["rss_ready"] = m.rss_mib()
        line = m.wait_log(r"cache reconciled")
        row["reconcile_s"] = (field(line, "millis") or 0) / 1000.0
        row["rss_reconciled"] = m.rss_mib()
        picks = [rnd.randrange(written["tags"]) for _ in range(args.lookups)]
        row["first"] = lookups(m.port, written["tags"], picks, written["blobs"], args.blob_size)
        row["again"] = lookups(m.port, written["tags"], picks, written["blobs"], args.blob_size)
        row["stats_running_s"], stats = cache_stats(binary, cache)
        check_stats(stats, written, "running")
        row["rss_end"] = m.rss_mib()
        row["hwm"] = m.rss_mib("VmHWM")
    finally:
        m.stop()
    row["stats_offline_s"], stats = cache_stats(binary, cache)
    check_stats(stats, written, "offline")
    return row


def eviction_run(binary, work, cache, upstream, total):
    max_size = int(total * 0.9)
    m = Mirror(binary, work, cache, upstream.port, max_size=max_size)
    try:
        row = {"ready_s": m.wait_ready(), "max_size": max_size}
        line = m.wait_log(r"evicted least recently used content")
        row["evict_s"] = (field(line, "millis") or 0) / 1000.0
        row["evicted"] = field(line, "entries")
        row["hwm"] = m.rss_mib("VmHWM")
        _, stats = cache_stats(binary, cache)
    finally:
        m.stop()
    low_water = max_size // 100 * 90
    if stats["bytes"] > low_water:
        raise RuntimeError("after eviction %d bytes cached, over the low-water mark %d"
                           % (stats["bytes"], low_water))
    row["bytes_after"] = stats["bytes"]
    return row, stats["bytes"]


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt % med
    return (fmt + " (" + fmt + "–" + fmt + ")") % (med, min(values), max(values))


def report(args, sizes, results, load0, load1, others):
    p = print
    info = run.machine_info()
    p("- command: `python3 benches/bigcache.py --sizes %s --runs %d --lookups %d --blob-size %d`"
      % (args.sizes, args.runs, args.lookups, args.blob_size))
    p("- pullthrough %s; %s CPUs (%s), %s" % (run.git_rev(), info["nproc"], info["cpu"], info["mem"]))
    p("- load average %.2f before, %.2f after; other builders' processes seen: %s"
      % (load0 or 0, load1 or 0, others or "none"))
    p("- figures: median (min–max) over %d runs per size on the same generated cache;"
      " eviction: one pass per run, each on what the previous pass left" % args.runs)
    p()
    p("| blobs / tags | generate | cache on disk | ready | reconciled | RSS ready | RSS reconciled "
      "| peak RSS | tag p50 / p99, first | tag p50 / p99, again | stats (running) "
      "| stats (offline) | eviction pass | evicted | peak RSS evicting |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (blobs, tags), r in zip(sizes, results):
        s, e, w = r["serve"], r["evict"], r["written"]
        col = lambda k, fmt: spread([x[k] for x in s], fmt)  # noqa: E731
        lat = lambda k: "%s / %s" % (  # noqa: E731
            spread([x[k]["p50"] for x in s], "%.2f"), spread([x[k]["p99"] for x in s], "%.2f ms"))
        p("| %d / %d | %.0f s | %.2f GiB | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            blobs, tags, w["wall_s"], r["disk"] / (1 << 30),
            col("ready_s", "%.2f s"), col("reconcile_s", "%.1f s"),
            col("rss_ready", "%.0f MiB"), col("rss_reconciled", "%.0f MiB"),
            col("hwm", "%.0f MiB"), lat("first"), lat("again"),
            col("stats_running_s", "%.2f s"), col("stats_offline_s", "%.2f s"),
            spread([x["evict_s"] for x in e], "%.2f s"), spread([x["evicted"] for x in e], "%d"),
            spread([x["hwm"] for x in e], "%.0f MiB")))
    p()
    p("Upstream requests seen by the stub over the whole run: %d (every answer from the cache)."
      % results[0]["upstream_requests"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000:10000,300000:30000,1000000:100000")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--lookups", type=int, default=3000)
    ap.add_argument("--blob-size", type=int, default=128)
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO_ROOT, "target")), "release", "pullthrough"))
    ap.add_argument("--generator", default=None)
    ap.add_argument("--work", default=os.path.join(REPO_ROOT, "target", "bigcache-work"),
                    help="scratch dir (deleted at the end); keep it off tmpfs")
    ap.add_argument("--keep", action="store_true", help="leave the work dir (debugging)")
    args = ap.parse_args()
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",")]
    gen = generator_binary(args.generator)
    if not os.access(args.binary, os.X_OK):
        sys.exit("%s not found: cargo build --release first" % args.binary)
    if os.path.exists(args.work):
        sys.exit("%s exists: remove it or pass another --work" % args.work)
    signal_handlers()
    upstream = StubUpstream()
    rnd = random.Random(16)
    load0, others = run.loadavg(), run.busy_others()
    results = []
    try:
        for blobs, tags in sizes:
            work = os.path.join(args.work, "%d-%d" % (blobs, tags))
            os.makedirs(work)
            cache = os.path.join(work, "cache")
            log("generating %d blobs, %d tags" % (blobs, tags))
            written = generate(gen, cache, blobs, tags, args.blob_size)
            log("generated in %.1f s: %s" % (written["wall_s"], written))
            r = {"written": written, "disk": dir_bytes(cache), "serve": [], "evict": []}
            for i in range(args.runs):
                r["serve"].append(serve_run(args, args.binary, work, cache, written, upstream, rnd))
                log("run %d: %s" % (i + 1, r["serve"][-1]))
            total = written["bytes"]
            for i in range(args.runs):
                row, total = eviction_run(args.binary, work, cache, upstream, total)
                r["evict"].append(row)
                log("eviction %d: %s" % (i + 1, row))
            results.append(r)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        results[0]["upstream_requests"] = upstream.count[0]
        if upstream.count[0]:
            raise RuntimeError("the upstream stub saw %d requests" % upstream.count[0])
    finally:
        PROCS.stop_all()
        upstream.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    report(args, sizes, results, load0, run.loadavg(), others)


def signal_handlers():
    import signal
    signal.signal(signal.SIGTERM, run._on_signal)
    signal.signal(signal.SIGINT, run._on_signal)


if __name__ == "__main__":
    main()
