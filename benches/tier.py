#!/usr/bin/env python3
"""S3-tier benchmark for pullthrough (issue 11): a real Ceph RGW under the mirror.

    python3 benches/tier.py              # full run, about 2 minutes
    python3 benches/tier.py --quick      # smoke run, under a minute

Everything runs on 127.0.0.1, started and stopped by PID by this script:

  object store  Ceph RGW (Debian's ceph-mon, ceph-osd, radosgw), brought up
                as tests/it/support/rgw.rs does: one monitor with auth off,
                pool size 1, one BlueStore OSD on a sparse file, radosgw with
                the beast frontend on a loopback port, one S3 user made with
                radosgw-admin, buckets made with a signed `PUT /bucket`.
  upstream      nginx from benches/run.py (limit_rate --rate per blob
                connection; its access log counts upstream GETs), whose
                second server is also the ceiling for serving a file.
  mirrors       target/release/pullthrough with `[storage]` on the bucket.

A. Warm blob (--warm-mib, default 200 MiB). Mirror A pulls it (sha256
   checked) and uploads it to the bucket; then, per repetition and in a
   rotating order, one GET (new connection, CRC-32 and length checked) of
   (a) A, from its local disk; (b) a new replica B with an empty cache
   dir on the same bucket: object store -> client while B's local tier
   fills (no upstream GET allowed, checked in nginx's log; B's second GET
   must not touch the bucket, checked in its metrics); (c) nginx serving
   the same file; and for context (g) curl GETting the object straight
   from RGW (the store's own ceiling). Reported: each transfer time, the
   ratios b/c, a/c, b/a, b/g: median and range over the repetitions.

B. Upload overhead on a cold pull (--cold-mib, default 100 MiB). Per
   repetition, in a rotating order: (d) GET straight from the upstream;
   (e) a new mirror without a tier; (f) a new mirror with the tier (a new
   prefix each time, so the bucket misses). Reported: transfer times, the
   ratios e/d, f/d, f/e, and how long after its client was done the
   mirror's background upload landed (pullthrough_tier_uploads_total).

Python 3 standard library only (plus the ceph, nginx and curl binaries).
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (  # noqa: E402
    PROCS, REPO_ROOT, MiB, Blob, Nginx, Pullthrough, StaticNginx, Watch, _on_signal,
    busy_others, fetch_once, free_port, http_get, loadavg, log, machine_info, make_manifest,
    summarize_upstream, verify_full)

ACCESS_KEY = "PTBENCHACCESSKEY"
SECRET_KEY = "pt-bench-secret-key-not-a-real-one"
REGION = "us-east-1"
STEP_LIMIT = 60.0
CEPH_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph", "curl")


# --------------------------------------------------------------------------
# Ceph RGW

CEPH_CONF = """[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
ms_bind_msgr1 = false
ms_bind_ipv6 = false
public_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = /dev/null
[mon]
mon_data = {d}/mon/$name
[osd]
osd_data = {d}/osd/$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = 4294967296
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 536870912
[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw_data = {d}/rgw
"""


def uuid():
    with open("/proc/sys/kernel/random/uuid") as fh:
        return fh.read().strip()


class Rgw:
    """One monitor, one OSD, one radosgw and an S3 user, under `dir`."""

    def __init__(self):
        # Short: admin sockets live under it and unix paths stay < 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="ptrgwb", dir="/tmp")
        self.procs = []

    def start(self):
        t0 = time.monotonic()
        mon_port, self.port = free_port(), free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        for sub in ("mon", "osd/0", "run", "log", "rgw"):
            os.makedirs(os.path.join(self.dir, sub))
        fsid = uuid()
        self.conf = os.path.join(self.dir, "ceph.conf")
        with open(self.conf, "w") as fh:
            fh.write(CEPH_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=self.port, d=self.dir))
        monmap = os.path.join(self.dir, "monmap")
        self.step(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                   "[v2:127.0.0.1:%d]" % mon_port, monmap])
        self.step(self.ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap))
        self.spawn("ceph-mon", self.ceph("ceph-mon", "-i", "a", "-f"))
        osd_uuid = uuid()
        osd_id = self.step(self.ceph("ceph", "osd", "new", osd_uuid)).strip()
        if osd_id != "0":
            raise RuntimeError("ceph osd new gave id %r, expected 0" % osd_id)
        self.step(self.ceph("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid))
        self.step(self.ceph("ceph", "osd", "crush", "add", "osd.0", "1.0",
                            "host=localhost", "root=default"))
        self.spawn("ceph-osd", self.ceph("ceph-osd", "-i", "0", "-f"))
        self.spawn("radosgw", self.ceph("radosgw", "-n", "client.rgw", "-f"))
        deadline = time.monotonic() + STEP_LIMIT
        while True:
            try:
                http_get(self.port, "/", timeout=2.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("radosgw did not answer on %s within %.0fs"
                                       % (self.endpoint, STEP_LIMIT))
                time.sleep(0.1)
        self.step(self.ceph("radosgw-admin", "user", "create", "--uid", "pullthrough",
                            "--display-name", "pullthrough bench",
                            "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY))
        self.secret_file = os.path.join(self.dir, "s3-secret")
        with open(self.secret_file, "w") as fh:
            fh.write(SECRET_KEY + "\n")
        self.started_in = time.monotonic() - t0
        log("Ceph RGW up on %s in %.1fs" % (self.endpoint, self.started_in))

    def ceph(self, program, *args):
        return [program, "-c", self.conf] + list(args)

    def step(self, argv):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=STEP_LIMIT)
        if p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(argv[:4]), p.returncode,
                                                       p.stdout.decode(errors="replace")[-2000:]))
        return p.stdout.decode(errors="replace")

    def spawn(self, name, argv):
        self.procs.append(PROCS.start(name, argv, os.path.join(self.dir, "log", name + ".out")))

    def pids(self):
        return [p.pid for p in self.procs]

    def curl(self, path, *extra, write_out="%{http_code}"):
        """A signed request with curl; what -w writes (status by default)."""
        argv = ["curl", "-s", "-m", "60", "-o", "/dev/null", "-w", write_out,
                "--aws-sigv4", "aws:amz:%s:s3" % REGION, "--user", "%s:%s" % (ACCESS_KEY, SECRET_KEY),
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"] + list(extra) + [
                "%s/%s" % (self.endpoint, path)]
        return subprocess.run(argv, stdout=subprocess.PIPE, timeout=90).stdout.decode().strip()

    def bucket(self, name):
        """Creates a bucket with a signed PUT (object_store cannot)."""
        out = self.curl(name, "-X", "PUT")
        if out != "200":
            raise RuntimeError("create bucket %s: HTTP %s" % (name, out))
        return name

    def get_time(self, key, size):
        """Seconds curl takes to GET an object of `size` bytes (to /dev/null)."""
        out = self.curl(key, write_out="%{http_code} %{size_download} %{time_total}").split()
        if len(out) != 3 or out[0] != "200" or int(out[1]) != size:
            raise RuntimeError("curl GET %s from RGW: %r" % (key, out))
        return float(out[2])

    def storage_toml(self, bucket, prefix):
        return ('[storage]\nurl = "s3://%s/%s"\n[storage.s3]\nendpoint = "%s"\nregion = "%s"\n'
                'path_style = true\nallow_http = true\naccess_key_id = "%s"\n'
                'secret_access_key_file = "%s"\n'
                % (bucket, prefix, self.endpoint, REGION, ACCESS_KEY, self.secret_file))

    def stop(self, keep):
        for p in reversed(self.procs):
            PROCS.stop(p)
        self.procs = []
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# mirrors on the tier

class TierPullthrough(Pullthrough):
    """pullthrough with `[storage]` on a bucket (None: local disk only)."""

    def __init__(self, work, upstream_port, rgw, bucket, prefix, name):
        super().__init__(work, upstream_port)
        self.rgw, self.bucket, self.prefix, self.name = rgw, bucket, prefix, name

    started = 0

    def start(self):
        # run.Mirror names its dir NAME-N by a per-object count; these objects
        # are made afresh for every repetition, so count across them instead.
        TierPullthrough.started += 1
        self.n = TierPullthrough.started - 1
        return super().start()

    def command(self, d):
        argv, env = super().command(d)
        if self.rgw is not None:
            cfg = os.path.join(d, "pullthrough.toml")
            with open(cfg, "w") as fh:
                fh.write(self.rgw.storage_toml(self.bucket, self.prefix))
            argv += ["--config", cfg]
        return argv, env


def metric(port, name, labels):
    """Sum of the samples of `name` whose labels include `labels` (dict)."""
    st, _, body = http_get(port, "/metrics")
    if st != 200:
        raise RuntimeError("/metrics: HTTP %d" % st)
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_metric(port, name, labels, at_least, timeout=60.0):
    """Seconds until the metric reaches at_least (polled every 20 ms), or None."""
    t0 = time.perf_counter()
    for _ in range(int(timeout / 0.02) + 1):
        if metric(port, name, labels) >= at_least:
            return time.perf_counter() - t0
        time.sleep(0.02)
    return None


def get_checked(port, blob, what):
    r = fetch_once(port, blob.url, timeout=120, deadline=time.monotonic() + 300)
    if r.get("err") or r["status"] != 200 or r["bytes"] != blob.size or r["crc"] != blob.crc:
        raise RuntimeError("%s: GET gave status %s, %s bytes, crc %08x, err %s (want %d bytes, "
                           "crc %08x)" % (what, r["status"], r["bytes"], r["crc"], r.get("err"),
                                          blob.size, blob.crc))
    return r


def upstream_blob_gets(nginx, mark, blob):
    nginx.wait_idle()
    return summarize_upstream(nginx.requests_since(mark), blob)["blob_gets"]


# --------------------------------------------------------------------------
# the two measurements

def run_warm(cfg, work, nginx, rgw, blob):
    bucket = rgw.bucket("bench-warm")
    a = TierPullthrough(work, nginx.upstream_port, rgw, bucket, "warm", "pullthrough-a").start()
    err = verify_full(a.port, blob.url, blob)
    if err:
        raise RuntimeError("first pull through A: %s" % err)
    if wait_metric(a.port, "pullthrough_tier_uploads_total", {"result": "stored"}, 1) is None:
        raise RuntimeError("A's upload of the warm blob did not land within 60 s")
    mark = nginx.mark()
    get_checked(a.port, blob, "A, warm")
    if upstream_blob_gets(nginx, mark, blob):
        raise RuntimeError("A's second GET went upstream")
    servers = {"a": a, "c": StaticNginx(nginx)}
    rows = []
    for rep in range(cfg.reps):
        times, extra = {}, {}
        order = ["a", "b", "c", "g"][rep % 4:] + ["a", "b", "c", "g"][:rep % 4]
        for who in order:
            if who == "g":
                times["g"] = rgw.get_time("%s/warm/blobs/sha256/%s" % (bucket, blob.hex), blob.size)
                continue
            if who != "b":
                times[who] = get_checked(servers[who].port, blob, who)["time"]
                continue
            b = TierPullthrough(work, nginx.upstream_port, rgw, bucket, "warm",
                                "pullthrough-b").start()
            mark = nginx.mark()
            watch_b, watch_ceph = Watch(b.pids()), Watch(rgw.pids())
            first = get_checked(b.port, blob, "B, empty disk")
            times["b"], times["b_ttfb"] = first["time"], first["ttfb"]
            used_b, used_ceph = watch_b.stop(), watch_ceph.stop()
            hits = metric(b.port, "pullthrough_tier_lookups_total", {"result": "hit"})
            read = metric(b.port, "pullthrough_tier_bytes_total", {"direction": "read"})
            get_checked(b.port, blob, "B, second GET")
            read2 = metric(b.port, "pullthrough_tier_bytes_total", {"direction": "read"})
            ups = upstream_blob_gets(nginx, mark, blob)
            b.stop()
            if ups or hits < 1 or read < blob.size or read2 != read:
                raise RuntimeError("B: %d upstream blob GETs, %d tier hits, %d bytes read from "
                                   "the bucket, %d more on its second GET" % (
                                       ups, hits, read, read2 - read))
            extra = {"cpu_b": used_b["cpu_s"], "cpu_ceph": used_ceph["cpu_s"]}
        rows.append(dict(times, **extra))
        log("warm rep %d: a %.3fs b %.3fs c %.3fs g %.3fs"
            % (rep + 1, times["a"], times["b"], times["c"], times["g"]))
    a.stop()
    return rows


def run_cold(cfg, work, nginx, rgw, blob):
    bucket = rgw.bucket("bench-cold")
    rows = []
    for rep in range(cfg.reps):
        times, landed = {}, None
        order = ["d", "e", "f"][rep % 3:] + ["d", "e", "f"][:rep % 3]
        for who in order:
            mark = nginx.mark()
            if who == "d":
                times["d"] = get_checked(nginx.upstream_port, blob, "direct")["time"]
                continue
            tier = who == "f"
            m = TierPullthrough(work, nginx.upstream_port, rgw if tier else None, bucket,
                                "cold-%d" % rep, "pullthrough-tier" if tier else "pullthrough")
            m.start()
            times[who] = get_checked(m.port, blob, "cold, " + ("tier" if tier else "no tier"))["time"]
            if tier:
                landed = wait_metric(m.port, "pullthrough_tier_uploads_total",
                                     {"result": "stored"}, 1)
                if landed is None:
                    raise RuntimeError("the cold pull's upload did not land within 60 s")
            ups = upstream_blob_gets(nginx, mark, blob)
            m.stop()
            if ups != 1:
                raise RuntimeError("cold pull %s: %d upstream blob GETs, want 1" % (who, ups))
        rows.append(dict(times, landed=landed))
        log("cold rep %d: direct %.3fs no tier %.3fs tier %.3fs, upload landed %.3fs later"
            % (rep + 1, times["d"], times["e"], times["f"], landed))
    return rows


# --------------------------------------------------------------------------
# report

def spread(values):
    return "%.2f (%.2f–%.2f)" % (statistics.median(values), min(values), max(values))


def report(cfg, warm, cold, rgw, sizes, wall, binary):
    out = []
    p = out.append
    mi = machine_info()
    p("## S3 tier (Ceph RGW): %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    p("")
    p("- binary: `%s`; Ceph: %s; RGW up in %.1f s" % (
        binary, subprocess.run(["ceph", "--version"], stdout=subprocess.PIPE,
                               timeout=10).stdout.decode().split("(")[0].strip(), rgw.started_in))
    p("- machine: %d CPUs (%s), %s RAM; load average %s at start, %s at end; other busy "
      "processes at start: %s" % (mi["nproc"], mi["cpu"], mi["mem"], cfg.load_start, loadavg(),
                                  cfg.busy_start or "none"))
    p("- upstream limit_rate %s per connection; %d repetitions; run took %.0f s" % (
        cfg.rate, cfg.reps, wall))
    p("")
    if warm:
        p("### Warm blob, %d MiB, one GET each (median (min–max) over repetitions)" % (sizes[0] // MiB))
        p("")
        p("| served by | seconds | MiB/s |")
        p("|---|---:|---:|")
        for key, label in (("a", "(a) pullthrough, local disk"),
                           ("b", "(b) replica with empty disk: bucket → client, local tier filling"),
                           ("c", "(c) nginx, same file"),
                           ("g", "(g) context: curl GET of the object straight from RGW")):
            ts = [r[key] for r in warm]
            p("| %s | %s | %.0f |" % (label, spread(ts), sizes[0] / MiB / statistics.median(ts)))
        p("")
        p("| ratio of transfer times | median (min–max) |")
        p("|---|---:|")
        for x, y in (("b", "c"), ("a", "c"), ("b", "a"), ("b", "g")):
            p("| %s / %s | %s |" % (x, y, spread([r[x] / r[y] for r in warm])))
        p("")
        p("Time to first byte of (b): %s s (a fresh process: its first connection to RGW)."
          % spread([r["b_ttfb"] for r in warm]))
        p("")
        p("CPU seconds during (b), median (min–max): replica B %s, ceph-mon + ceph-osd + "
          "radosgw %s. B made 0 upstream blob GETs and its second GET read nothing from the "
          "bucket, every repetition." % (spread([r["cpu_b"] for r in warm]),
                                          spread([r["cpu_ceph"] for r in warm])))
        p("")
    if cold:
        p("### Cold pull, %d MiB, one GET each (new mirror, empty cache, each repetition)"
          % (sizes[1] // MiB))
        p("")
        p("| path | seconds |")
        p("|---|---:|")
        for key, label in (("d", "(d) direct from the upstream"),
                           ("e", "(e) through a mirror without the tier"),
                           ("f", "(f) through a mirror with the tier (bucket misses, upload after)")):
            p("| %s | %s |" % (label, spread([r[key] for r in cold])))
        p("")
        p("| ratio of transfer times | median (min–max) |")
        p("|---|---:|")
        for x, y in (("e", "d"), ("f", "d"), ("f", "e")):
            p("| %s / %s | %s |" % (x, y, spread([r[x] / r[y] for r in cold])))
        p("")
        p("The tier mirror's upload landed in the bucket (tier_uploads_total{result=\"stored\"}) "
          "%s s after its client had the last byte; each mirror made exactly 1 upstream blob GET."
          % spread([r["landed"] for r in cold]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 40/20 MiB blobs, 2 repetitions")
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "pullthrough"))
    ap.add_argument("--warm-mib", type=int, default=200)
    ap.add_argument("--cold-mib", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rate", default="50m", help="nginx limit_rate per upstream blob connection")
    ap.add_argument("--runs", default="warm,cold", help="comma list of warm, cold")
    ap.add_argument("--keep", action="store_true", help="keep the work directory and Ceph's logs")
    ap.add_argument("--output", help="also write the report to this file")
    cfg = ap.parse_args()
    if cfg.quick:
        cfg.warm_mib, cfg.cold_mib, cfg.reps = 40, 20, 2
    runs = {s.strip() for s in cfg.runs.split(",")}
    binary = os.path.abspath(cfg.binary)
    if not os.access(binary, os.X_OK):
        ap.error("%s not found: run `cargo build --release` first" % binary)
    Pullthrough.binary = binary
    for tool in ("nginx",) + CEPH_TOOLS:
        if shutil.which(tool) is None:
            ap.error("%s is not installed (apt-get install nginx curl ceph-mon ceph-osd radosgw)"
                     % tool)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    t_start = time.monotonic()
    cfg.load_start = loadavg()
    cfg.busy_start = busy_others()
    work = tempfile.mkdtemp(prefix="pullthrough-tier-")
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "blobs"))
    log("work directory %s" % work)
    rgw = None
    try:
        log("writing random blobs (%d MiB warm, %d MiB cold)" % (cfg.warm_mib, cfg.cold_mib))
        warm_blob = Blob(data, cfg.warm_mib * MiB, "warm")
        cold_blob = Blob(data, cfg.cold_mib * MiB, "cold")
        _, manifest_hex = make_manifest(data)
        nginx = Nginx(work, data, manifest_hex, cfg.rate)
        rgw = Rgw()
        rgw.start()
        warm = run_warm(cfg, work, nginx, rgw, warm_blob) if "warm" in runs else None
        cold = run_cold(cfg, work, nginx, rgw, cold_blob) if "cold" in runs else None
        text = report(cfg, warm, cold, rgw, (warm_blob.size, cold_blob.size),
                      time.monotonic() - t_start, binary)
        print(text)
        if cfg.output:
            with open(cfg.output, "w") as fh:
                fh.write(text + "\n")
    finally:
        if rgw is not None:
            rgw.stop(cfg.keep)
        PROCS.stop_all()
        if cfg.keep:
            log("kept %s%s" % (work, " and %s" % rgw.dir if rgw else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
