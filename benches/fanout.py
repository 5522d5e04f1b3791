#!/usr/bin/env python3
"""Cold fan-out at fleet size (issue 16, see BENCHMARKS.md).

    python3 benches/fanout.py                       # 10, 100 and 1,000 clients, 3 rounds
    python3 benches/fanout.py --clients 1000 --rounds 1 --servers pullthrough

N clients (the Rust load generator benches/fanout.rs: N connections, one
GET each at the same moment, every byte compared with the blob in memory)
GET one uncached 50 MiB blob through a fresh mirror whose upstream is nginx
limiting each blob connection to --rate (50 MiB/s). Per mirror and size:
the slowest client's time, upstream blob GETs (nginx's access log), peak
RSS (VmHWM) and CPU of the mirror.

Peers from the same round: one client straight from the rate-limited
upstream ("direct", the 1.5x yardstick), the same N clients reading the
file from nginx with sendfile and no limit ("machine bound": what this
machine and load generator can move), and distribution in proxy mode.
Rounds alternate the servers, so all see the same machine load.

Reuses benches/run.py (processes, nginx, distribution, RSS/CPU sampling);
127.0.0.1 only, every process stopped by PID, every loop bounded.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402
import run  # noqa: E402
from run import MiB, PROCS, REPO_ROOT, log  # noqa: E402


def build_loadgen():
    """Builds benches/fanout.rs (release settings) and returns its path."""
    out = subprocess.run(["cargo", "bench", "--bench", "fanout", "--no-run",
                          "--message-format=json"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         timeout=1800, check=True).stdout.decode()
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "fanout":
            return msg["executable"]
    raise RuntimeError("cargo built no fanout executable")


def load(cfg, port, blob, clients):
    """Runs the load generator once; its JSON result, plus the driver's
    summary: ok count, slowest last byte, slowest first byte, errors."""
    argv = [cfg.loadgen, "--port", str(port), "--path", blob.url, "--expect", blob.path,
            "--clients", str(clients), "--threads", str(cfg.threads),
            "--timeout-s", str(cfg.timeout)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    PROCS.live[p.pid] = ("fanout loadgen", p)
    try:
        out, err = p.communicate(timeout=cfg.timeout + 60)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, sig=run.signal.SIGKILL)
        raise
    PROCS.live.pop(p.pid, None)
    if p.returncode != 0:
        raise RuntimeError("load generator exit %s: %s" % (p.returncode, err.decode()[-500:]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(out)
    r["loadgen_cpu"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    done = [t for t in r["last_byte"] if t is not None]
    firsts = [t for t in r["first_byte"] if t is not None]
    r["ok"] = sum(1 for b in r["bytes"] if b == blob.size) - len(r["errors"])
    r["slowest"] = max(done) if len(done) == clients else None
    r["median"] = statistics.median(done) if done else None
    r["ttfb_max"] = max(firsts) if firsts else None
    r["gbit"] = (blob.size * len(done) * 8 / 1e9 / max(done)) if done else None
    return r


def cold_run(cfg, nginx, blob, mirror, clients):
    """One fresh mirror, N clients: the row for the report."""
    mirror.start()
    mark = nginx.mark()
    w = run.Watch(mirror.pids())
    try:
        r = load(cfg, mirror.port, blob, clients)
    finally:
        idle = nginx.wait_idle()
        stats = w.stop()
        alive = mirror.alive()
        mirror.stop()
    up = run.summarize_upstream(nginx.requests_since(mark), blob)
    if not alive:
        r["errors"].append("mirror died during the run")
    if not idle:
        r["errors"].append("upstream still sending 60 s after the clients finished")
    r.update(rss=stats["rss_mib"], cpu=stats["cpu_s"], blob_gets=up["blob_gets"],
             upstream_x=up["blob_bytes"] / blob.size)
    log("%s x%d: slowest %s s, first byte <= %s s, %d/%d ok, upstream GETs %d (%.2fx bytes), "
        "RSS %.1f MiB, CPU %.1f s%s" % (
            mirror.name, clients, run.f(r["slowest"]), run.f(r["ttfb_max"]), r["ok"], clients,
            r["blob_gets"], r["upstream_x"], r["rss"], r["cpu"],
            "; errors: %s" % r["errors"][:3] if r["errors"] else ""))
    return r


def static_run(cfg, nginx, blob, clients):
    w = run.Watch(nginx.pids())
    r = load(cfg, nginx.static_port, blob, clients)
    s = w.stop()
    r.update(rss=None, cpu=s["cpu_s"], blob_gets=None, upstream_x=None)
    log("nginx static x%d: slowest %s s, %s Gbit/s" % (clients, run.f(r["slowest"]),
                                                      run.f(r["gbit"])))
    return r


def spread(xs, fmt="%.2f"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt % xs[0]
    return (fmt + " (" + fmt + "–" + fmt + ")") % (statistics.median(xs), min(xs), max(xs))


def report(cfg, rounds, sizes, load0, load1, busy, wall):
    out = []
    p = out.append
    p("Command: `python3 benches/fanout.py %s` (%s, commit %s); %d rounds, %.0f s wall. "
      "Machine: %s cores, %s; loadavg %.2f before, %.2f after; "
      "other builders running at the start: %s (the machine is shared)." % (
          " ".join(sys.argv[1:]), run.version([cfg.binary, "--version"]), run.git_rev(),
          len(rounds), wall, os.cpu_count(), run.machine_info()["mem"], load0 or -1,
          load1 or -1, busy or "none seen"))
    p("")
    p("Blob %d MiB, upstream nginx `limit_rate %s` per connection; load generator "
      "`benches/fanout.rs` with %d threads. Times are seconds from the common start to "
      "each client's last byte; median of rounds (min–max)." % (
          blob_mib(sizes), cfg.rate, cfg.threads))
    p("")
    p("| who | clients | slowest | median client | slowest / direct | slowest / machine bound "
      "| byte-exact | upstream blob GETs | peak RSS MiB | server CPU s | load generator CPU s |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    direct = [r["direct"]["slowest"] for r in rounds]
    p("| upstream, direct | 1 | %s | | 1.00x | | %s | 1 | | | |" % (
        spread(direct), "/".join("%d" % r["direct"]["ok"] for r in rounds)))
    for n in cfg.sizes:
        bound = [r[("nginx", n)]["slowest"] for r in rounds if ("nginx", n) in r]
        for who in ["nginx"] + cfg.servers:
            rows = [(r, r[(who, n)]) for r in rounds if (who, n) in r]
            if not rows:
                continue
            vs_direct = [x["slowest"] / r["direct"]["slowest"] for r, x in rows
                         if x["slowest"]]
            vs_bound = [x["slowest"] / r[("nginx", n)]["slowest"] for r, x in rows
                        if x["slowest"] and ("nginx", n) in r]
            label = "nginx static, no limit (machine bound)" if who == "nginx" else who
            p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label, n, spread([x["slowest"] for _, x in rows]),
                spread([x["median"] for _, x in rows]),
                spread(vs_direct, "%.1fx"),
                "" if who == "nginx" else spread(vs_bound, "%.2fx"),
                "/".join("%d" % x["ok"] for _, x in rows),
                "–" if who == "nginx" else "/".join("%d" % x["blob_gets"] for _, x in rows),
                "–" if who == "nginx" else spread([x["rss"] for _, x in rows], "%.1f"),
                spread([x["cpu"] for _, x in rows], "%.1f"),
                spread([x["loadgen_cpu"] for _, x in rows], "%.1f")))
        if bound:
            notes.append("machine bound at %d clients: %s Gbit/s aggregate" % (
                n, spread([r[("nginx", n)]["gbit"] for r in rounds if ("nginx", n) in r])))
    p("")
    p("Aggregate: " + "; ".join(notes) + ".")
    errors = [(k, e) for r in rounds for k, x in r.items() if k != "direct"
              for e in x["errors"][:3]]
    if errors:
        p("")
        p("Errors: " + "; ".join("%s x%d: %s" % (k[0], k[1], e) for k, e in errors[:12]))
    return "\n".join(out)


def blob_mib(sizes):
    return sizes // MiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "pullthrough"))
    ap.add_argument("--loadgen", help="the built benches/fanout.rs (default: cargo builds it)")
    ap.add_argument("--clients", default="10,100,1000", help="comma list of fan-out sizes")
    ap.add_argument("--servers", default="pullthrough,distribution")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=50, help="blob size")
    ap.add_argument("--rate", default="50m", help="nginx limit_rate per upstream connection")
    ap.add_argument("--threads", type=int, default=2, help="load generator threads")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per load run")
    ap.add_argument("--output", help="also write the report to this file")
    cfg = ap.parse_args()
    cfg.sizes = [int(x) for x in cfg.clients.split(",") if x.strip()]
    cfg.servers = [s.strip() for s in cfg.servers.split(",") if s.strip()]
    cfg.rounds = max(1, min(cfg.rounds, 20))
    cfg.binary = os.path.abspath(cfg.binary)
    run.Pullthrough.binary = cfg.binary
    if not os.access(cfg.binary, os.X_OK):
        ap.error("%s not found: cargo build --release first" % cfg.binary)
    for tool in ["nginx"] + (["docker-registry"] if "distribution" in cfg.servers else []):
        if shutil.which(tool) is None:
            ap.error("%s is not installed" % tool)
    cfg.loadgen = cfg.loadgen or build_loadgen()
    nofile = fleet.raise_nofile()
    if nofile < max(cfg.sizes) + 100:
        ap.error("RLIMIT_NOFILE %d is too low for %d clients" % (nofile, max(cfg.sizes)))
    run.signal.signal(run.signal.SIGINT, run._on_signal)
    run.signal.signal(run.signal.SIGTERM, run._on_signal)

    t0 = time.monotonic()
    load0, busy = run.loadavg(), run.busy_others()
    work = tempfile.mkdtemp(prefix="pullthrough-fanout-")
    try:
        data = os.path.join(work, "data")
        os.makedirs(os.path.join(data, "blobs"))
        blob = run.Blob(data, cfg.mib * MiB, "cold")
        _, manifest_hex = run.make_manifest(data)
        nginx = run.Nginx(work, data, manifest_hex, cfg.rate)
        mirrors = {"pullthrough": run.Pullthrough(work, nginx.upstream_port),
                   "distribution": run.Distribution(work, nginx.upstream_port)}
        rounds = []
        for i in range(cfg.rounds):
            log("round %d of %d" % (i + 1, cfg.rounds))
            r = {"direct": load(cfg, nginx.upstream_port, blob, 1)}
            log("direct: %s s" % run.f(r["direct"]["slowest"]))
            for n in cfg.sizes:
                r[("nginx", n)] = static_run(cfg, nginx, blob, n)
                order = cfg.servers if i % 2 == 0 else list(reversed(cfg.servers))
                for who in order:
                    r[(who, n)] = cold_run(cfg, nginx, blob, mirrors[who], n)
            rounds.append(r)
        text = report(cfg, rounds, blob.size, load0, run.loadavg(), busy,
                      time.monotonic() - t0)
        print(text)
        if cfg.output:
            with open(cfg.output, "w") as fh:
                fh.write(text + "\n")
    finally:
        PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
