#!/usr/bin/env python3
"""Cold single-client pull and CPU per warm byte (issue 16; see BENCHMARKS.md).

    python3 benches/coldpull.py pull             # skopeo: direct vs cold mirror
    python3 benches/coldpull.py pull --rate 50m  # CDN limited per connection
    python3 benches/coldpull.py warmcpu          # server CPU s per GiB served
    python3 benches/coldpull.py warmcpu --perf /tmp/warm.txt  # and a profile

pull: a 270 MB, 3-layer OCI image behind a Docker Hub stand-in made of one
nginx (benches/hub-nginx.conf.in: Bearer token auth on /v2/, a /token
realm, blob GETs answered 307 to a "CDN" server serving the files with
sendfile). `skopeo copy docker://… dir:…` straight from it, then through a
fresh pullthrough with an empty cache, alternating, --rounds times; every
copied file is checked against its digest. The upstream's access log lists
each round trip with its start time, so the report shows where a pull's
first blob byte waits.

warmcpu: benches/run.py's run 2 (8 connections GET a cached 200 MiB blob
for --duration s) against nginx's static server and pullthrough,
alternating, --rounds times; server CPU seconds (utime + stime from /proc)
per GiB served.

Reuses benches/run.py (processes, nginx, blobs, clients, CPU sampling);
127.0.0.1 only, every process stopped by PID, every loop bounded.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402
import run  # noqa: E402
from run import MiB, PROCS, REPO, log  # noqa: E402

GiB = 1 << 30
TAG = "latest"
TOKEN = "bench-token-0123456789"
# 140 + 90 + 40 MB: the 270 MB in three layers of unequal size.
LAYER_SIZES = (140_000_000, 90_000_000, 40_000_000)


# --------------------------------------------------------------------------
# the image and the Hub stand-in

def make_image(data_dir):
    """Three random layers, a config and an OCI manifest naming them."""
    layers = [run.Blob(data_dir, size, "layer%d" % i) for i, size in enumerate(LAYER_SIZES)]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
        "config": {},
    }, separators=(",", ":")).encode()
    cfg = run.small_blob(data_dir, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": run.OCI_MANIFEST,
        "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **cfg),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": b.digest, "size": b.size} for b in layers],
    }, indent=2).encode() + b"\n"
    with open(os.path.join(data_dir, "manifest.json"), "wb") as f:
        f.write(manifest)
    digests = [cfg["digest"]] + [b.digest for b in layers]
    return manifest, hashlib.sha256(manifest).hexdigest(), digests


class Hub(run.Nginx):
    """nginx as Docker Hub: token auth on the registry, blobs via a CDN.
    Its own config and log format; `pids` and `mark` are run.Nginx's."""

    def __init__(self, work, data_dir, manifest_hex, rate):
        self.dir = os.path.join(work, "hub")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.registry_port = run.free_port()
        self.cdn_port = run.free_port()
        with open(os.path.join(run.HERE, "hub-nginx.conf.in")) as f:
            tmpl = string.Template(f.read())
        conf = tmpl.substitute(
            user_line="user root;" if os.geteuid() == 0 else "",
            workers=os.cpu_count() or 1, dir=self.dir, data=data_dir, rate=rate,
            registry_port=self.registry_port, cdn_port=self.cdn_port,
            repo=REPO, tag=TAG, manifest_hex=manifest_hex, token=TOKEN)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.access_log = os.path.join(self.dir, "hub-access.log")
        self.proc = PROCS.start("hub-nginx", ["nginx", "-p", self.dir, "-c", self.conf],
                                os.path.join(self.dir, "nginx-stdout.log"))
        run.wait_ready(self.registry_port, self.proc)

    def requests_since(self, offset):
        """(start s, duration s, site, method, uri, status, bytes), by start."""
        out = []
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            for line in f.read().decode(errors="replace").splitlines():
                p = line.split()
                if len(p) < 7:
                    continue
                end, took = float(p[0]), float(p[1])
                site = "cdn" if int(p[2]) == self.cdn_port else "registry"
                out.append((end - took, took, site, p[3], p[4], int(p[5]), int(p[6])))
        return sorted(out)


# --------------------------------------------------------------------------
# pull

def skopeo_copy(port, out_dir, timeout):
    argv = ["skopeo", "copy", "--quiet", "--retry-times", "0", "--src-tls-verify=false",
            "docker://127.0.0.1:%d/%s:%s" % (port, REPO, TAG), "dir:" + out_dir]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    PROCS.live[p.pid] = ("skopeo", p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, sig=run.signal.SIGKILL)
        return None, t0, "timed out after %.0f s" % timeout
    finally:
        PROCS.live.pop(p.pid, None)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        return None, t0, "skopeo exit %d: %s" % (p.returncode, out.decode(errors="replace")[-300:])
    return took, t0, None


def check_copy(out_dir, manifest, digests):
    """The dir: copy holds the manifest byte for byte and every blob."""
    problems = []
    try:
        with open(os.path.join(out_dir, "manifest.json"), "rb") as f:
            if f.read() != manifest:
                problems.append("manifest.json differs from the upstream's")
    except OSError as e:
        problems.append("manifest.json: %s" % e)
    for d in digests:
        hexd = d.split(":", 1)[1]
        h = hashlib.sha256()
        try:
            with open(os.path.join(out_dir, hexd), "rb") as f:
                for chunk in iter(lambda: f.read(8 * MiB), b""):
                    h.update(chunk)
        except OSError as e:
            problems.append("%s: %s" % (d, e))
            continue
        if h.hexdigest() != hexd:
            problems.append("%s: wrong bytes" % d)
    return problems


def trace_lines(reqs, t0):
    """The upstream's view of one pull, relative to the client's start."""
    lines = []
    for start, took, site, method, uri, status, nbytes in reqs:
        shown = uri if len(uri) < 60 else uri[:40] + "…" + uri[-8:]
        lines.append("| %+.3f | %.3f | %s | %s %s | %d | %d |" % (
            start - t0, took, site, method, shown, status, nbytes))
    return lines


def layer_waits(reqs):
    """For each large CDN transfer: the time from the upstream's last byte
    to the client's next registry request, i.e. what the client spent
    after the upstream was done (its own fsync, and any mirror's)."""
    waits = []
    for i, (start, took, site, _, _, _, nbytes) in enumerate(reqs):
        if site != "cdn" or nbytes < MiB:
            continue
        end = start + took
        # skopeo may start a layer before the last one ends: only what
        # follows this transfer counts.
        nxt = [r[0] for r in reqs if r[2] == "registry" and r[0] >= end]
        if nxt:
            waits.append(min(nxt) - end)
    return waits


def pull(cfg, work):
    data = os.path.join(work, "data")
    log("writing a %d MB image" % (sum(LAYER_SIZES) // 10**6))
    manifest, manifest_hex, digests = make_image(data)
    hub = Hub(work, data, manifest_hex, cfg.rate)
    mirror = run.Pullthrough(work, hub.registry_port)
    rows = {"direct": [], "pullthrough": []}
    cpu = []
    traces = {}
    waits = {}
    errors = []
    timeout = 120.0
    for rnd in range(cfg.rounds):
        order = ("direct", "pullthrough") if rnd % 2 == 0 else ("pullthrough", "direct")
        for who in order:
            out_dir = os.path.join(work, "out-%s-%d" % (who, rnd))
            port = hub.registry_port
            if who == "pullthrough":
                mirror.start()
                port = mirror.port
                w = run.Watch(mirror.pids())
            mark = hub.mark()
            took, t0_perf, err = skopeo_copy(port, out_dir, timeout)
            t0_wall = time.time() - (time.perf_counter() - t0_perf)
            if who == "pullthrough":
                cpu.append(w.stop()["cpu_s"])
                mirror.stop()
            reqs = hub.requests_since(mark)
            if err is None:
                problems = check_copy(out_dir, manifest, digests)
                if problems:
                    err = "; ".join(problems)
            shutil.rmtree(out_dir, ignore_errors=True)
            if err:
                errors.append("round %d %s: %s" % (rnd + 1, who, err))
                log("round %d %s: %s" % (rnd + 1, who, err))
                continue
            rows[who].append(took)
            waits.setdefault(who, []).append(layer_waits(reqs))
            traces.setdefault(who, (reqs, t0_wall))
            log("round %d %s: %.2f s, %d upstream requests" % (rnd + 1, who, took, len(reqs)))
    hub_stop = hub.proc
    PROCS.stop(hub_stop)
    return {"rows": rows, "cpu": cpu, "traces": traces, "errors": errors, "waits": waits}


def report_pull(cfg, r):
    out = []
    p = out.append
    d, m = r["rows"]["direct"], r["rows"]["pullthrough"]
    p("CDN rate per connection: %s; image: 3 layers of %s bytes, one config, one OCI "
      "manifest; %d round(s), direct and mirror alternating." % (
          cfg.rate if cfg.rate != "0" else "no limit",
          " + ".join("{:,}".format(s) for s in LAYER_SIZES), cfg.rounds))
    p("")
    p("| path | skopeo copy, s (each round) | median | vs direct |")
    p("|---|---|---:|---:|")
    md = statistics.median(d) if d else None
    mm = statistics.median(m) if m else None
    p("| direct from the Hub stand-in | %s | %s | 1.00x |" % (
        ", ".join("%.2f" % x for x in d), run.f(md)))
    p("| through a cold pullthrough | %s | %s | %s |" % (
        ", ".join("%.2f" % x for x in m), run.f(mm), run.ratio(mm, md)))
    p("")
    pairs = [b / a for a, b in zip(d, m)]
    if pairs:
        p("Per-round ratio (mirror / direct, same round): %s; median %.3f. "
          "pullthrough CPU per pull: %s s." % (
              ", ".join("%.3f" % x for x in pairs), statistics.median(pairs),
              ", ".join("%.2f" % c for c in r["cpu"])))
        p("")
    for who in ("direct", "pullthrough"):
        if r["waits"].get(who):
            p("%s: from each layer's last upstream byte to skopeo's next blob request, s "
              "(layers in order, per round): %s" % (who, "; ".join(
                  ", ".join("%.3f" % w for w in ws) for ws in r["waits"][who])))
            p("")
    for who in ("direct", "pullthrough"):
        if who not in r["traces"]:
            continue
        reqs, t0 = r["traces"][who]
        p("Upstream round trips of the first %s pull (start relative to skopeo's start, s):"
          % who)
        p("")
        p("| start | took | site | request | status | bytes |")
        p("|---:|---:|---|---|---:|---:|")
        out.extend(trace_lines(reqs, t0))
        p("")
    if r["errors"]:
        p("Errors: " + "; ".join(r["errors"]))
        p("")
    return "\n".join(out)


# --------------------------------------------------------------------------
# warm CPU per byte

def warmcpu(cfg, work):
    data = os.path.join(work, "data")
    warm = run.Blob(data, 200 * MiB, "warm")
    manifest, manifest_hex = run.make_manifest(data)
    nginx = run.Nginx(work, data, manifest_hex, "50m")
    static = run.StaticNginx(nginx)
    mirror = run.Pullthrough(work, nginx.upstream_port)
    mirror.start()
    err, _ = run.warm_mirror(mirror, nginx, warm, manifest)
    if err:
        raise RuntimeError("warm-up: " + err)
    if run.verify_full(static.port, warm.url, warm):
        raise RuntimeError("static nginx does not serve the blob")
    rows = {"nginx": [], "pullthrough": []}
    errors = []
    profile = None
    for rnd in range(cfg.rounds):
        order = (static, mirror) if rnd % 2 == 0 else (mirror, static)
        for t in order:
            perf = None
            if cfg.perf and t is mirror and profile is None:
                perf = fleet.perf_profile(mirror.proc.pid, cfg.duration, cfg.perf, work)
            w = run.Watch(t.pids())
            res = run.blob_throughput(t.port, warm.url, 8, cfg.duration, warm.size)
            st = w.stop()
            if perf:
                fleet.perf_report(*perf)
                profile = cfg.perf
            if res["errors"]:
                errors += ["round %d %s: %s" % (rnd + 1, t.name, e) for e in res["errors"][:4]]
            gib = res["bytes"] / GiB
            rows[t.name].append({"mib_s": res["mib_s"], "cpu": st["cpu_s"], "gib": gib,
                                 "cpu_per_gib": st["cpu_s"] / gib if gib else None})
            log("round %d %s: %.0f MiB/s, %.2f GiB, CPU %.1f s, %.2f s/GiB" % (
                rnd + 1, t.name, res["mib_s"], gib, st["cpu_s"],
                st["cpu_s"] / gib if gib else -1))
    mirror.stop()
    nginx.stop()
    return {"rows": rows, "errors": errors, "profile": profile}


def report_warmcpu(cfg, r):
    out = []
    p = out.append
    p("8 connections GET a cached 200 MiB blob for %d s per round, %d rounds, nginx "
      "(static server, sendfile) and pullthrough alternating." % (cfg.duration, cfg.rounds))
    p("")
    p("| server | MiB/s (each round) | server CPU s per GiB (each round) | median s/GiB |")
    p("|---|---|---|---:|")
    med = {}
    for who in ("nginx", "pullthrough"):
        rs = r["rows"][who]
        vals = [x["cpu_per_gib"] for x in rs if x["cpu_per_gib"] is not None]
        med[who] = statistics.median(vals) if vals else None
        p("| %s | %s | %s | %s |" % (who, ", ".join("%.0f" % x["mib_s"] for x in rs),
                                     ", ".join("%.3f" % v for v in vals), run.f(med[who], "%.3f")))
    p("")
    pairs = [b["cpu_per_gib"] / a["cpu_per_gib"]
             for a, b in zip(r["rows"]["nginx"], r["rows"]["pullthrough"])
             if a["cpu_per_gib"] and b["cpu_per_gib"]]
    if pairs:
        p("pullthrough / nginx CPU per GiB, per round: %s; median %.2fx." % (
            ", ".join("%.2f" % x for x in pairs), statistics.median(pairs)))
        p("")
    if r["profile"]:
        p("Profile of pullthrough's first round: %s" % r["profile"])
        p("")
    if r["errors"]:
        p("Errors: " + "; ".join(r["errors"]))
        p("")
    return "\n".join(out)


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["pull", "warmcpu"])
    ap.add_argument("--binary", default=os.path.join(run.REPO_ROOT, "target", "release",
                                                     "pullthrough"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", default="0",
                    help="pull: nginx limit_rate per CDN connection (0: no limit)")
    ap.add_argument("--duration", type=int, default=10, help="warmcpu: seconds per round")
    ap.add_argument("--perf", help="warmcpu: profile pullthrough's first round into this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    cfg = ap.parse_args()
    run.Pullthrough.binary = os.path.abspath(cfg.binary)
    if not os.access(run.Pullthrough.binary, os.X_OK):
        ap.error("%s not found: cargo build --release" % cfg.binary)
    need = ("nginx", "skopeo") if cfg.what == "pull" else ("nginx",)
    for tool in need + (("perf",) if cfg.perf else ()):
        if shutil.which(tool) is None:
            ap.error("%s is not installed (apt-get install nginx skopeo linux-perf)" % tool)
    run.signal.signal(run.signal.SIGINT, run._on_signal)
    run.signal.signal(run.signal.SIGTERM, run._on_signal)
    work = tempfile.mkdtemp(prefix="pullthrough-coldpull-")
    os.makedirs(os.path.join(work, "data", "blobs"))
    load0, busy0 = run.loadavg(), run.busy_others()
    try:
        if cfg.what == "pull":
            text = report_pull(cfg, pull(cfg, work))
        else:
            text = report_warmcpu(cfg, warmcpu(cfg, work))
        print("`python3 benches/coldpull.py %s`; %s, %s; load average %.2f at start, %.2f at "
              "end; others busy at start: %s\n" % (
                  " ".join(sys.argv[1:]), os.path.basename(cfg.binary), run.git_rev(),
                  load0 or -1, run.loadavg() or -1, busy0 or "none"))
        print(text)
    finally:
        PROCS.stop_all()
        if cfg.keep:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
