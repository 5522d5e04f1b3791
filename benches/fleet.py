#!/usr/bin/env python3
"""Fleet-shaped benchmarks for pullthrough against nginx (see BENCHMARKS.md).

    python3 benches/fleet.py manifests        # tag/HEAD/digest under wrk
    python3 benches/fleet.py idle             # 10,000 idle keep-alive conns
    python3 benches/fleet.py manifests --perf perf.txt   # and a profile
    python3 benches/fleet.py h2               # 1,000 HTTP/2 connections x 10 streams

manifests: wrk at -c32 and -c256 against nginx's static server (same bytes,
access_log off, keepalive_requests 1000000) and pullthrough with its
default log (RUST_LOG unset: info, access lines on), alternating peer and
mirror round by round so both see the same machine load; ratios are taken
per round, then their spread reported.

idle: N keep-alive HTTP/1.1 connections, each after one GET /v2/, held by
an asyncio client in this process (RLIMIT_NOFILE raised to the hard limit
for it and the servers it starts); the server's RSS before and with them,
and wrk -c32 on a warm tag while they are held vs without.

h2: h2load (nghttp2-client) with 1,000 connections of 10 concurrent
streams each GETs the warm tag over HTTP/2 without TLS, against nginx
(`listen ... http2`) and pullthrough, alternating; the servers' peak RSS
(VmHWM) and CPU per request while it runs, and pullthrough's RSS after.

Reuses benches/run.py (processes, nginx, the test image); 127.0.0.1 only,
every process stopped by PID, every loop bounded.
"""

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402
from run import PROCS, REPO, log  # noqa: E402


class DefaultLogPullthrough(run.Pullthrough):
    """pullthrough as shipped: RUST_LOG unset (info, access lines on), the
    log going to a file as a service manager's journal would take it."""

    extra_args = []

    def command(self, d):
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        argv, _ = super().command(d)
        cfg = os.path.join(d, "config.toml")
        with open(cfg, "w") as f:
            f.write(self.config_text)
        return argv + ["--config", cfg], env

    config_text = ""


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_generator(argv, timeout):
    """Runs a load generator to its end (stopped by PID if this script is
    interrupted); its output, stdout and stderr together."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    PROCS.live[p.pid] = (argv[0], p)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        PROCS.live.pop(p.pid, None)
    return out.decode(errors="replace")


def wrk(port, path, conns, duration, head=False):
    """wrk for GET; for HEAD (what dockerd sends) ab -i, since wrk's parser
    waits for a body after a HEAD's Content-Length."""
    if not head:
        r = run.run_wrk(port, path, conns, 2, duration)
        r["duration"] = duration
        return r
    argv = ["ab", "-q", "-k", "-i", "-c", str(conns), "-t", str(duration), "-n", "100000000",
            "-H", "Accept: " + run.ACCEPT, "http://127.0.0.1:%d%s" % (port, path)]
    out = load_generator(argv, duration + 30)
    r = {"raw": out, "rps": None, "non2xx": 0, "socket_errors": "", "p50": None, "p99": None,
         "duration": duration}
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Failed requests:\s+(\d+)", out)
    if m and int(m.group(1)):
        r["socket_errors"] = "%s failed" % m.group(1)
    for q, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s%%\s+(\d+)" % q, out, re.M)
        if m:
            r[key] = float(m.group(1))
    return r


def check_served(port, manifest, manifest_hex):
    """The bytes and digest a client checks, for tag, digest and HEAD."""
    problems = []
    for ref in ("latest", "sha256:" + manifest_hex):
        for method in ("GET", "HEAD"):
            st, h, body = run.http_get(port, "/v2/%s/manifests/%s" % (REPO, ref),
                                       headers={"Accept": run.ACCEPT}, method=method)
            if st != 200 or h.get("docker-content-digest") != "sha256:" + manifest_hex:
                problems.append("%s %s: %d %s" % (method, ref, st,
                                                  h.get("docker-content-digest")))
            if method == "GET" and body != manifest:
                problems.append("GET %s: %d bytes, not the manifest" % (ref, len(body)))
            if method == "HEAD" and h.get("content-length") != str(len(manifest)):
                problems.append("HEAD %s: content-length %s" % (ref, h.get("content-length")))
    return problems


def perf_profile(pid, seconds, out_path, work):
    data = os.path.join(work, "perf.data")
    p = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", data,
                          "--", "sleep", str(seconds)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.live[p.pid] = ("perf", p)
    return p, data, out_path


def perf_report(p, data, out_path):
    try:
        p.wait(60)
    finally:
        PROCS.live.pop(p.pid, None)
    with open(out_path, "w") as f:
        # self time by symbol, then inclusive time (where it is spent from)
        for extra in (["--no-children"], ["--children"]):
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--percent-limit",
                                  "0.8", "-g", "none", "--sort", "symbol"] + extra,
                                 capture_output=True, text=True, timeout=300)
            f.write(rep.stdout)
    log("profile written to %s" % out_path)


SHAPES = [("GET tag", "latest", False), ("HEAD tag", "latest", True),
          ("GET digest", None, False)]


def checked_mirror(work, nginx, manifest, manifest_hex, *peer_ports):
    """pullthrough as shipped, started, and serving the manifest's bytes
    and digest (as the peers on `peer_ports` do)."""
    pt = DefaultLogPullthrough(work, nginx.upstream_port)
    pt.config_text = ""
    pt.start()
    problems = []
    for port in (pt.port,) + peer_ports:
        problems += check_served(port, manifest, manifest_hex)
    if problems:
        pt.stop()
        raise RuntimeError("; ".join(problems))
    return pt


def manifests(cfg, work, nginx, manifest, manifest_hex):
    pt = checked_mirror(work, nginx, manifest, manifest_hex, nginx.static_port)
    rows = []
    try:
        for conns in cfg.conns:
            for label, ref, head in [x for x in SHAPES if x[0] in cfg.shapes]:
                path = "/v2/%s/manifests/%s" % (REPO, ref or "sha256:" + manifest_hex)
                ratios, ours, theirs, errors = [], [], [], []
                for rnd in range(cfg.rounds):
                    # the tag is re-filled before each round so it stays
                    # within its TTL (60 s) while wrk runs
                    run.http_get(pt.port, path, headers={"Accept": run.ACCEPT})
                    mark = nginx.mark()
                    w = run.Watch(nginx.pids())
                    a = wrk(nginx.static_port, path, conns, cfg.duration, head)
                    a["cpu_us"] = per_request_us(w.stop()["cpu_s"], a)
                    prof = None
                    if cfg.perf and conns == cfg.conns[0] and label == "GET tag" and rnd == 0:
                        prof = perf_profile(pt.proc.pid, max(1, cfg.duration - 1), cfg.perf, work)
                    w = run.Watch(pt.pids())
                    b = wrk(pt.port, path, conns, cfg.duration, head)
                    b["cpu_us"] = per_request_us(w.stop()["cpu_s"], b)
                    if prof:
                        perf_report(*prof)
                    up = run.summarize_upstream(nginx.requests_since(mark))
                    for who, r in (("nginx", a), ("pullthrough", b)):
                        if r["rps"] is None or r["non2xx"] or r["socket_errors"]:
                            errors.append("%s: rps %s non2xx %s sockets %s" % (
                                who, r["rps"], r["non2xx"], r["socket_errors"]))
                    if a["rps"] and b["rps"]:
                        ratios.append(b["rps"] / a["rps"])
                        ours.append(b)
                        theirs.append(a)
                    log("-c%d %s round %d: nginx %s req/s, pullthrough %s req/s (p99 %s ms), "
                        "upstream requests %d" % (conns, label, rnd + 1, a["rps"], b["rps"],
                                                  b["p99"], up["requests"]))
                if not pt.alive():
                    errors.append("pullthrough died")
                rows.append({"conns": conns, "shape": label, "ratios": ratios,
                             "pt": [r["rps"] for r in ours], "nginx": [r["rps"] for r in theirs],
                             "pt_p99": [r["p99"] for r in ours],
                             "pt_cpu": [r["cpu_us"] for r in ours if r["cpu_us"]],
                             "nginx_cpu": [r["cpu_us"] for r in theirs if r["cpu_us"]],
                             "nginx_p99": [r["p99"] for r in theirs], "errors": errors})
        after = check_served(pt.port, manifest, manifest_hex)
        if after:
            rows.append({"errors": ["after the runs: " + "; ".join(after)]})
        with open(pt.logpath, "rb") as f:
            access = sum(1 for line in f if b" access: " in line)
        log("pullthrough access lines in its log: %d" % access)
        dropped = None
        _, _, body = run.http_get(pt.port, "/metrics")
        for line in body.decode(errors="replace").splitlines():
            if line.startswith('pullthrough_log_lines_dropped_total{kind="access"}'):
                dropped = line.split()[-1]
        rows.append({"access_lines": access, "dropped": dropped})
    finally:
        pt.stop()
    return rows


def per_request_us(cpu_s, r):
    """Server CPU per request, in µs: steadier than req/s on a shared
    machine, where the load generator's share of the CPUs varies."""
    if not r["rps"] or cpu_s is None:
        return None
    return cpu_s * 1e6 / (r["rps"] * r["duration"])


def report_manifests(rows):
    out = ["| shape | conns | nginx req/s | pullthrough req/s | ratio (min–max) | "
           "p99 ms nginx / pullthrough | server CPU µs/request nginx / pullthrough |",
           "|---|---|---|---|---|---|---|"]
    extra = []
    for r in rows:
        if "shape" not in r:
            if "access_lines" in r:
                extra.append("- pullthrough access lines written: %d; "
                             "access lines dropped %s"
                             % (r["access_lines"], r["dropped"]))
            extra += ["- error: " + e for e in r.get("errors", [])]
            continue
        med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
        out.append("| %s | %d | %.0f | %.0f | %.2fx (%.2f–%.2f) | %.2f / %.2f | %.1f / %.1f |" % (
            r["shape"], r["conns"], med(r["nginx"]), med(r["pt"]), med(r["ratios"]),
            min(r["ratios"] or [float("nan")]), max(r["ratios"] or [float("nan")]),
            med([x for x in r["nginx_p99"] if x is not None]),
            med([x for x in r["pt_p99"] if x is not None]), med(r["nginx_cpu"]),
            med(r["pt_cpu"])))
        extra += ["- error (%s -c%d): %s" % (r["shape"], r["conns"], e) for e in r["errors"]]
    return "\n".join(out + [""] + extra)


async def hold_connections(port, n, ready, release, opened):
    """Opens n connections, one GET /v2/ each, keeps them until release."""
    request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    conns = []
    failures = 0
    sem = asyncio.Semaphore(256)  # connects in flight, not a cap on held ones

    async def one():
        nonlocal failures
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(request)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await asyncio.wait_for(r.readexactly(length), 10)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
                conns.append(w)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(n)))
    opened.update(held=len(conns), failures=failures)
    ready.set()
    await release.wait()
    # still open? a closed one reads EOF at once
    alive = 0
    for w in conns:
        if not w.is_closing() and not w.transport.is_closing():
            alive += 1
        w.close()
    opened["alive_at_end"] = alive


def idle(cfg, work, nginx, manifest, manifest_hex):
    import threading
    pt = DefaultLogPullthrough(work, nginx.upstream_port)
    pt.config_text = "max_connections = %d\n" % (cfg.connections + 1024)
    pt.start()
    res = {"connections": cfg.connections}
    try:
        path = "/v2/%s/manifests/latest" % REPO
        problems = check_served(pt.port, manifest, manifest_hex)
        if problems:
            raise RuntimeError("; ".join(problems))
        base = wrk(pt.port, path, 32, cfg.duration)
        res["rss_before_kib"] = run.proc_status_kb(pt.proc.pid, "VmRSS")
        loop = asyncio.new_event_loop()
        ready, opened = threading.Event(), {}
        release = None

        def client():
            nonlocal release
            asyncio.set_event_loop(loop)
            release = asyncio.Event()
            aready = asyncio.Event()
            task = loop.create_task(hold_connections(pt.port, cfg.connections, aready,
                                                     release, opened))

            async def signal_ready():
                await aready.wait()
                ready.set()
            loop.create_task(signal_ready())
            loop.run_until_complete(task)

        t = threading.Thread(target=client, daemon=True)
        t0 = time.monotonic()
        t.start()
        if not ready.wait(300):
            raise RuntimeError("connections not open after 300 s")
        res["open_s"] = time.monotonic() - t0
        time.sleep(2)  # let the server settle (idle timers armed, buffers shrunk)
        res.update(opened)
        res["rss_held_kib"] = run.proc_status_kb(pt.proc.pid, "VmRSS")
        res["threads"] = len(os.listdir("/proc/%d/task" % pt.proc.pid))
        res["fds"] = len(os.listdir("/proc/%d/fd" % pt.proc.pid))
        held = wrk(pt.port, path, 32, cfg.duration)
        res["rps_base"], res["rps_held"] = base["rps"], held["rps"]
        res["p99_base"], res["p99_held"] = base["p99"], held["p99"]
        res["rss_after_wrk_kib"] = run.proc_status_kb(pt.proc.pid, "VmRSS")
        loop.call_soon_threadsafe(release.set)
        t.join(60)
        res["alive_at_end"] = opened.get("alive_at_end")
        if not pt.alive():
            res["error"] = "pullthrough died"
    finally:
        pt.stop()
    return res


def h2load(port, path, conns, streams, duration):
    argv = ["h2load", "-c", str(conns), "-m", str(streams), "-t", "2", "-D", str(duration),
            "--warm-up-time=1", "-H", "Accept: " + run.ACCEPT,
            "http://127.0.0.1:%d%s" % (port, path)]
    out = load_generator(argv, duration + 60)
    r = {"raw": out, "rps": None, "ok": 0, "failed": None, "duration": duration}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    if m:
        r["ok"], r["failed"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    r["non2xx"] = sum(int(x) for x in m.groups()) if m else None
    return r


def h2(cfg, work, nginx, manifest, manifest_hex):
    pt = checked_mirror(work, nginx, manifest, manifest_hex)
    rows = []
    try:
        path = "/v2/%s/manifests/latest" % REPO
        rows_rss = run.proc_status_kb(pt.proc.pid, "VmRSS")
        for rnd in range(cfg.rounds):
            run.http_get(pt.port, path, headers={"Accept": run.ACCEPT})
            w = run.Watch(nginx.pids())
            a = h2load(nginx.h2_port, path, cfg.h2_conns, cfg.h2_streams, cfg.duration)
            wa = w.stop()
            w = run.Watch(pt.pids())
            b = h2load(pt.port, path, cfg.h2_conns, cfg.h2_streams, cfg.duration)
            wb = w.stop()
            for who, r in (("nginx", a), ("pullthrough", b)):
                if not r["rps"] or r["failed"] or r["non2xx"] != 0:
                    rows.append({"error": "%s: %s" % (who, r["raw"][-600:])})
            rows.append({"round": rnd + 1, "nginx_rps": a["rps"], "pt_rps": b["rps"],
                         "nginx_rss": wa["rss_mib"], "pt_rss": wb["rss_mib"],
                         "nginx_cpu": per_request_us(wa["cpu_s"], a),
                         "pt_cpu": per_request_us(wb["cpu_s"], b)})
            log("h2 round %d: nginx %s req/s, pullthrough %s req/s, peak RSS %.1f / %.1f MiB" % (
                rnd + 1, a["rps"], b["rps"], wa["rss_mib"], wb["rss_mib"]))
        rows.append({"rss_before_kib": rows_rss,
                     "rss_after_kib": run.proc_status_kb(pt.proc.pid, "VmRSS")})
        if not pt.alive():
            rows.append({"error": "pullthrough died"})
    finally:
        pt.stop()
    return rows


def report_h2(rows, cfg):
    lines = ["h2load -c %d -m %d, %d s per run, GET tag over h2c" % (
                 cfg.h2_conns, cfg.h2_streams, cfg.duration), "",
             "| round | nginx req/s | pullthrough req/s | ratio | peak RSS MiB nginx / pullthrough "
             "| server CPU µs/request nginx / pullthrough |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "round" in r:
            ratio = r["pt_rps"] / r["nginx_rps"] if r["pt_rps"] and r["nginx_rps"] else None
            lines.append("| %d | %.0f | %.0f | %s | %.1f / %.1f | %s / %s |" % (
                r["round"], r["nginx_rps"] or 0, r["pt_rps"] or 0,
                "%.2fx" % ratio if ratio else "?", r["nginx_rss"], r["pt_rss"],
                "%.1f" % r["nginx_cpu"] if r["nginx_cpu"] else "?",
                "%.1f" % r["pt_cpu"] if r["pt_cpu"] else "?"))
        elif "rss_before_kib" in r:
            lines.append("")
            lines.append("- pullthrough RSS before %.1f MiB, after the runs %.1f MiB" % (
                r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024))
        elif "error" in r:
            lines.append("- error: " + r["error"])
    return "\n".join(lines)


def report_idle(r):
    per = None
    if r.get("rss_held_kib") and r.get("rss_before_kib") and r.get("held"):
        per = (r["rss_held_kib"] - r["rss_before_kib"]) / r["held"]
    lines = [
        "- connections asked %d, held %d, failed %d (opened in %.1f s)" % (
            r["connections"], r.get("held", 0), r.get("failures", 0), r.get("open_s", -1)),
        "- RSS before %.1f MiB, with them held %.1f MiB (%s KiB per connection), "
        "after wrk %.1f MiB" % (r["rss_before_kib"] / 1024, r["rss_held_kib"] / 1024,
                                "%.1f" % per if per is not None else "?",
                                r["rss_after_wrk_kib"] / 1024),
        "- server threads %d, fds %d" % (r["threads"], r["fds"]),
        "- wrk -c32 GET tag: %.0f req/s (p99 %.2f ms) without, %.0f req/s (p99 %.2f ms) "
        "with them held" % (r["rps_base"] or 0, r["p99_base"] or 0, r["rps_held"] or 0,
                           r["p99_held"] or 0),
    ]
    if r.get("error"):
        lines.append("- error: " + r["error"])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["manifests", "idle", "h2"])
    ap.add_argument("--binary", default=os.path.join(run.REPO_ROOT, "target", "release",
                                                     "pullthrough"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", default="32,256")
    ap.add_argument("--shapes", default="GET tag,HEAD tag,GET digest")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--h2-conns", type=int, default=1000)
    ap.add_argument("--h2-streams", type=int, default=10)
    ap.add_argument("--perf", help="profile pullthrough during the first -c GET-tag round "
                    "into this file (perf report --no-children)")
    cfg = ap.parse_args()
    cfg.conns = [int(c) for c in cfg.conns.split(",")]
    cfg.shapes = cfg.shapes.split(",")
    run.Pullthrough.binary = os.path.abspath(cfg.binary)
    for tool in ("nginx", "wrk", "ab") + (("perf",) if cfg.perf else ()) + (
            ("h2load",) if cfg.what == "h2" else ()):
        if shutil.which(tool) is None:
            ap.error("%s is not installed (apt-get install nginx wrk apache2-utils "
                     "nghttp2-client linux-perf)" % tool)
    nofile = raise_nofile()
    if cfg.what == "idle" and nofile < cfg.connections + 100:
        ap.error("RLIMIT_NOFILE hard limit %d is below %d connections" % (nofile,
                                                                          cfg.connections))
    work = tempfile.mkdtemp(prefix="pullthrough-fleet-")
    os.makedirs(os.path.join(work, "data", "blobs"))
    load0 = run.loadavg()
    busy0 = run.busy_others()
    try:
        manifest, manifest_hex = run.make_manifest(os.path.join(work, "data"))
        nginx = run.Nginx(work, os.path.join(work, "data"), manifest_hex, "50m")
        if cfg.what == "manifests":
            text = report_manifests(manifests(cfg, work, nginx, manifest, manifest_hex))
        elif cfg.what == "h2":
            text = report_h2(h2(cfg, work, nginx, manifest, manifest_hex), cfg)
        else:
            text = report_idle(idle(cfg, work, nginx, manifest, manifest_hex))
        print("%s, %s; load average %.2f at start, %.2f at end; others busy at start: %s; "
              "%d x %d s rounds; nofile %d\n" % (
                  os.path.basename(cfg.binary), run.git_rev(), load0 or -1,
                  run.loadavg() or -1, busy0 or "none", cfg.rounds, cfg.duration, nofile))
        print(text)
    finally:
        PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
