#!/usr/bin/env python3
"""Benchmarks for pullthrough against its peers (see BENCHMARKS.md).

    python3 benches/run.py            # full run, a few minutes
    python3 benches/run.py --quick    # smoke run, well under a minute

Everything runs on 127.0.0.1. The driver starts and stops every process it
uses by PID (nginx, docker-registry, pullthrough, wrk), bounds every loop in
count and time, and prints a markdown report on stdout (progress goes to
stderr). Python 3 standard library only.

Peers:
  upstream      nginx serving the registry paths from files, each blob
                connection limited to --rate (50 MiB/s), every request logged
                with its bytes so upstream fetches can be counted.
  nginx         the same files from a second nginx server with sendfile and
                no rate limit: the ceiling for serving cached bytes.
  distribution  docker-registry (distribution 2.8) in proxy mode.
  pullthrough   target/release/pullthrough (build it first).

Runs:
  1 cold fan-out     N clients GET one uncached blob at once, fresh mirror
                     and cache dir per repetition.
  2 warm blob        C connections GET a cached blob over and over for D s.
  3 warm manifest    wrk, 32 connections, a cached tag within its TTL.
  4 peak RSS         VmHWM of the mirror, reset (clear_refs) before each run.
"""

import argparse
import atexit
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
MiB = 1 << 20
REPO = "library/bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes

class Procs:
    """Every process the driver starts, so it can stop each one by PID."""

    def __init__(self):
        self.live = {}  # pid -> (name, Popen)

    def start(self, name, argv, logpath, env=None):
        logf = open(logpath, "ab")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        logf.close()
        self.live[p.pid] = (name, p)
        log("started %s pid %d" % (name, p.pid))
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        if p is None or p.pid not in self.live:
            return
        name = self.live[p.pid][0]
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s pid %d ignored %s for %.0fs; SIGKILL" % (name, p.pid, sig.name, timeout))
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        del self.live[p.pid]
        log("stopped %s pid %d (exit %s)" % (name, p.pid, p.returncode))

    def stop_all(self):
        for pid, (name, p) in list(self.live.items()):
            self.stop(p, timeout=5.0)


PROCS = Procs()
atexit.register(PROCS.stop_all)


def _on_signal(signum, frame):
    log("signal %d: stopping children" % signum)
    PROCS.stop_all()
    sys.exit(130)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path, headers=None, method="GET", timeout=10.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def wait_ready(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before answering" % proc.returncode)
        try:
            st, _, _ = http_get(port, "/v2/", timeout=2.0)
            if st in (200, 401):
                return
            last = "status %d" % st
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError("127.0.0.1:%d not ready after %.0fs (%s)" % (port, timeout, last))


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            if ppid == pid:
                out.append(int(d))
        except (OSError, ValueError):
            pass
    return out


def proc_status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (Linux: echo 5 > clear_refs)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Watch:
    """Peak RSS (VmHWM, sampled every 20 ms) and CPU time of a set of PIDs."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.reset_ok = all([reset_hwm(p) for p in self.pids])
        self.cpu0 = {p: proc_cpu_s(p) or 0.0 for p in self.pids}
        self.peak = {p: 0 for p in self.pids}
        self.cpu1 = dict(self.cpu0)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self):
        for p in self.pids:
            v = proc_status_kb(p, "VmHWM")
            if v is not None:
                self.peak[p] = max(self.peak[p], v)
            c = proc_cpu_s(p)
            if c is not None:
                self.cpu1[p] = c

    def _run(self):
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self):
        self._sample()
        self._stop.set()
        self._t.join(2)
        return {
            "rss_mib": sum(self.peak.values()) / 1024.0,
            "cpu_s": sum(self.cpu1[p] - self.cpu0[p] for p in self.pids),
            "hwm_reset": self.reset_ok,
        }


class LoadgenCpu:
    """CPU used by this driver's threads and by waited-for children (wrk)."""

    def __init__(self):
        self.a = resource.getrusage(resource.RUSAGE_SELF)
        self.b = resource.getrusage(resource.RUSAGE_CHILDREN)

    def stop(self):
        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (a.ru_utime + a.ru_stime - self.a.ru_utime - self.a.ru_stime
                + b.ru_utime + b.ru_stime - self.b.ru_utime - self.b.ru_stime)


# --------------------------------------------------------------------------
# test data and the nginx upstream

class Blob:
    def __init__(self, data_dir, size, seed_name):
        self.size = size
        h = hashlib.sha256()
        crc = 0
        tmp = os.path.join(data_dir, "blobs", seed_name + ".tmp")
        with open(tmp, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MiB))
                h.update(chunk)
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
                left -= len(chunk)
        self.hex = h.hexdigest()
        self.digest = "sha256:" + self.hex
        self.crc = crc
        self.path = os.path.join(data_dir, "blobs", self.hex)
        os.rename(tmp, self.path)
        self.url = "/v2/%s/blobs/%s" % (REPO, self.digest)


def small_blob(data_dir, data):
    hexd = hashlib.sha256(data).hexdigest()
    with open(os.path.join(data_dir, "blobs", hexd), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + hexd, "size": len(data)}


def make_manifest(data_dir):
    layer_bytes = os.urandom(4096)
    layer = small_blob(data_dir, layer_bytes)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        "config": {},
    }, separators=(",", ":")).encode()
    cfg = small_blob(data_dir, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **cfg),
        "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar", **layer)],
        "annotations": {"org.opencontainers.image.title": "pullthrough benchmark"},
    }, indent=2).encode() + b"\n"
    with open(os.path.join(data_dir, "manifest.json"), "wb") as f:
        f.write(manifest)
    return manifest, hashlib.sha256(manifest).hexdigest()


class Nginx:
    def __init__(self, work, data_dir, manifest_hex, rate):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.upstream_port = free_port()
        self.static_port = free_port()
        self.h2_port = free_port()
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            tmpl = string.Template(f.read())
        conf = tmpl.substitute(
            user_line="user root;" if os.geteuid() == 0 else "",
            workers=os.cpu_count() or 1,
            dir=self.dir, data=data_dir, rate=rate,
            upstream_port=self.upstream_port, static_port=self.static_port,
            h2_port=self.h2_port, manifest_hex=manifest_hex)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.access_log = os.path.join(self.dir, "upstream-access.log")
        self.proc = PROCS.start("nginx", ["nginx", "-p", self.dir, "-c", self.conf],
                                os.path.join(self.dir, "nginx-stdout.log"))
        wait_ready(self.upstream_port, self.proc)
        wait_ready(self.static_port, self.proc)

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)

    def mark(self):
        try:
            return os.path.getsize(self.access_log)
        except OSError:
            return 0

    def requests_since(self, offset):
        """Upstream requests logged since offset: (method, uri, status, bytes)."""
        out = []
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            for line in f.read().decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 4:
                    out.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
        return out

    def wait_idle(self, timeout=60.0):
        """Waits until the upstream is writing no response (stub_status)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            _, _, body = http_get(self.upstream_port, "/nginx_status")
            m = re.search(rb"Writing: (\d+)", body)
            # the status request itself counts as one writing connection
            quiet = quiet + 1 if m and int(m.group(1)) <= 1 else 0
            if quiet >= 3:
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        PROCS.stop(self.proc)


def summarize_upstream(reqs, blob=None):
    s = {"requests": len(reqs), "bytes": sum(r[3] for r in reqs),
         "blob_gets": 0, "blob_bytes": 0, "blob_heads": 0,
         "manifest_heads": 0, "manifest_gets": 0, "pings": 0, "other": 0}
    for method, uri, status, nbytes in reqs:
        if uri == "/v2/":
            s["pings"] += 1
            continue
        if "/blobs/" in uri and (blob is None or uri.endswith(blob.hex)):
            if method == "GET":
                s["blob_gets"] += 1
                s["blob_bytes"] += nbytes
            elif method == "HEAD":
                s["blob_heads"] += 1
            else:
                s["other"] += 1
        elif "/manifests/" in uri and method in ("GET", "HEAD"):
            s["manifest_gets" if method == "GET" else "manifest_heads"] += 1
        else:
            s["other"] += 1
    return s


def describe_upstream(up):
    """'N (a HEAD manifest, b GET /v2/, ...)' for the report."""
    parts = []
    for key, label in (("manifest_heads", "HEAD manifest"), ("manifest_gets", "GET manifest"),
                       ("pings", "GET /v2/"), ("blob_gets", "GET blob"),
                       ("blob_heads", "HEAD blob"), ("other", "other")):
        if up.get(key):
            parts.append("%d %s" % (up[key], label))
    return "%d" % up["requests"] + (" (%s)" % ", ".join(parts) if parts else "")


# --------------------------------------------------------------------------
# mirrors

class Mirror:
    name = "?"

    def __init__(self, work, upstream_port):
        self.work = work
        self.upstream_port = upstream_port
        self.proc = None
        self.port = None
        self.n = 0

    def start(self):
        self.n += 1
        self.port = free_port()
        d = os.path.join(self.work, "%s-%d" % (self.name, self.n))
        os.makedirs(d)
        self.cache_dir = os.path.join(d, "cache")
        argv, env = self.command(d)
        self.logpath = os.path.join(d, "log.txt")
        self.proc = PROCS.start(self.name, argv, self.logpath, env=env)
        wait_ready(self.port, self.proc)
        return self

    def pids(self):
        return [self.proc.pid]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        PROCS.stop(self.proc)
        if self.proc is not None and self.proc.returncode not in (0, -signal.SIGTERM):
            log("%s exited with %s; log %s" % (self.name, self.proc.returncode, self.logpath))
        self.proc = None

    def log_tail(self, n=15):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read().splitlines()[-n:]
        except OSError:
            return []


class Pullthrough(Mirror):
    name = "pullthrough"
    binary = None

    def command(self, d):
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        return [self.binary, "serve", "--listen", "127.0.0.1:%d" % self.port,
                "--cache-dir", self.cache_dir,
                "--upstream", "http://127.0.0.1:%d" % self.upstream_port], env


class Distribution(Mirror):
    name = "distribution"

    def command(self, d):
        with open(os.path.join(HERE, "registry.yml.in")) as f:
            tmpl = string.Template(f.read())
        cfg = os.path.join(d, "config.yml")
        with open(cfg, "w") as f:
            f.write(tmpl.substitute(root=self.cache_dir, port=self.port,
                                    upstream_port=self.upstream_port))
        return ["docker-registry", "serve", cfg], dict(os.environ)


class StaticNginx:
    """The static nginx server, presented like a (pre-warmed) mirror."""
    name = "nginx"

    def __init__(self, nginx):
        self.nginx = nginx
        self.port = nginx.static_port

    def pids(self):
        return self.nginx.pids()

    def alive(self):
        return self.nginx.proc.poll() is None


# --------------------------------------------------------------------------
# clients

def fetch_once(port, path, timeout, deadline, want_crc=True, headers=None):
    """One GET on a new connection, reading with 1 MiB readinto calls.
    Returns a dict with status, bytes, crc32, ttfb and total time."""
    r = {"ok": False, "status": None, "bytes": 0, "crc": 0, "err": None,
         "ttfb": None, "time": None}
    buf = bytearray(MiB)
    mv = memoryview(buf)
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        resp = c.getresponse()
        r["ttfb"] = time.perf_counter() - t0
        r["status"] = resp.status
        r["length"] = resp.getheader("Content-Length")
        crc = 0
        n = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("run deadline reached after %d bytes" % n)
            k = resp.readinto(mv)
            if not k:
                break
            if want_crc:
                crc = zlib.crc32(mv[:k], crc)
            n += k
        r["bytes"] = n
        r["crc"] = crc
        r["ok"] = resp.status == 200
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        r["err"] = "%s: %s" % (type(e).__name__, e)
    finally:
        r["time"] = time.perf_counter() - t0
        c.close()
    return r


def fan_out(port, path, n, timeout, run_timeout):
    """n threads start together (barrier) and GET path once each."""
    results = [None] * n
    barrier = threading.Barrier(n + 1, timeout=30)
    deadline = time.monotonic() + run_timeout

    def worker(i):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            results[i] = {"ok": False, "err": "barrier broken", "time": None}
            return
        results[i] = fetch_once(port, path, timeout, deadline)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 5))
    return [r or {"ok": False, "err": "client thread did not finish", "time": None}
            for r in results]


def check_results(results, blob):
    errs = []
    for i, r in enumerate(results):
        if r.get("err"):
            errs.append("client %d: %s" % (i, r["err"]))
        elif r["status"] != 200:
            errs.append("client %d: HTTP %s" % (i, r["status"]))
        elif r["bytes"] != blob.size:
            errs.append("client %d: %d bytes, want %d" % (i, r["bytes"], blob.size))
        elif r["crc"] != blob.crc:
            errs.append("client %d: wrong bytes (crc32 %08x, want %08x)" % (i, r["crc"], blob.crc))
    return errs


def verify_full(port, path, blob, timeout=120.0):
    """GET once and check the sha256 of the whole body."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        c.request("GET", path)
        resp = c.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = resp.read(MiB)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if resp.status != 200:
            return "HTTP %d" % resp.status
        if n != blob.size:
            return "%d bytes, want %d" % (n, blob.size)
        if h.hexdigest() != blob.hex:
            return "sha256 mismatch"
        return None
    except Exception as e:  # noqa: BLE001
        return "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()
        log("verify GET %s:%d took %.2fs" % ("127.0.0.1", port, time.perf_counter() - t0))


def blob_throughput(port, path, conns, duration, expect_len):
    """conns threads GET path back to back on keep-alive connections for
    `duration` seconds; bytes are counted up to the end of the window."""
    total = [0] * conns
    done = [0] * conns
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(conns + 1, timeout=30)
    window = {}

    def worker(i):
        buf = bytearray(MiB)
        mv = memoryview(buf)
        c = None
        try:
            barrier.wait()
            end = window["end"]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for _ in range(1000000):  # bounded; the time window ends it first
                if time.perf_counter() >= end:
                    break
                c.request("GET", path)
                resp = c.getresponse()
                if resp.status != 200:
                    resp.read()
                    raise RuntimeError("HTTP %d" % resp.status)
                n = 0
                while True:
                    k = resp.readinto(mv)
                    if not k:
                        break
                    n += k
                    total[i] += k
                    if time.perf_counter() >= end:
                        return  # window over mid-body; the connection is dropped
                if n != expect_len:
                    raise RuntimeError("%d bytes, want %d" % (n, expect_len))
                done[i] += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("conn %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            if c is not None:
                c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    window["end"] = start + duration
    barrier.wait()
    for t in threads:
        t.join(duration + 35)
    elapsed = time.perf_counter() - start
    return {"bytes": sum(total), "responses": sum(done), "elapsed": elapsed,
            "mib_s": sum(total) / MiB / elapsed, "errors": errors}


def run_wrk(port, path, conns, threads, duration, script=None):
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
            "--timeout", "5s", "-H", "Accept: " + ACCEPT] + (["-s", script] if script else []) + [
            "http://127.0.0.1:%d%s" % (port, path)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    PROCS.live[p.pid] = ("wrk", p)
    try:
        out, _ = p.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, sig=signal.SIGKILL)
        raise
    PROCS.live.pop(p.pid, None)
    out = out.decode(errors="replace")
    r = {"raw": out, "rps": None, "non2xx": 0, "socket_errors": "", "p50": None, "p99": None,
         "requests": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        r["socket_errors"] = m.group(1).strip()
    for q, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % q, out, re.M)
        if m:
            v = float(m.group(1))
            r[key] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    return r


# --------------------------------------------------------------------------
# the runs

def run_cold(cfg, nginx, blob, mirrors):
    """Run 1: returns a list of row dicts."""
    rows = []
    client_timeout = 120.0
    run_timeout = max(60.0, 30.0 * blob.size / cfg.rate_bytes)

    # the reference: one uncontended transfer straight from the upstream
    direct = []
    for _ in range(cfg.reps):
        r = fan_out(nginx.upstream_port, blob.url, 1, client_timeout, run_timeout)
        errs = check_results(r, blob)
        if errs:
            raise RuntimeError("direct upstream transfer failed: %s" % errs)
        direct.append(r[0]["time"])
    t_direct = statistics.median(direct)
    log("direct upstream transfer: %s s (median %.2f)" % (
        ", ".join("%.2f" % t for t in direct), t_direct))
    rows.append({"who": "upstream, direct", "clients": 1, "reps": len(direct),
                 "slowest": t_direct, "slowest_all": direct, "median": t_direct,
                 "ttfb": None, "blob_gets": 1, "bytes_x": 1.0, "rss": None, "cpu": None,
                 "upstream_all": [1],
                 "errors": [], "direct": t_direct})

    # the floor: the same clients reading the same file from nginx with no
    # rate limit, i.e. what this machine and this load generator can do
    floor = {"who": "nginx static, no rate limit (floor)", "clients": cfg.clients,
             "reps": cfg.reps, "slowest_all": [], "median_all": [], "ttfb_all": [],
             "errors": [], "direct": t_direct, "upstream_all": [], "blob_gets": [],
             "bytes_x": None, "rss": None, "cpu": None, "cpu_all": []}
    for rep in range(cfg.reps):
        w = Watch(nginx.pids())
        res = fan_out(nginx.static_port, blob.url, cfg.clients, client_timeout, run_timeout)
        floor["cpu_all"].append(w.stop()["cpu_s"])
        floor["errors"] += check_results(res, blob)[:8]
        times = [r["time"] for r in res if r.get("time") is not None]
        floor["slowest_all"].append(max(times))
        floor["median_all"].append(statistics.median(times))
        floor["ttfb_all"].append(max(r["ttfb"] for r in res if r.get("ttfb") is not None))
    floor["slowest"] = statistics.median(floor["slowest_all"])
    floor["median"] = statistics.median(floor["median_all"])
    floor["ttfb"] = max(floor["ttfb_all"])
    floor["cpu"] = statistics.median(floor["cpu_all"])
    log("floor: %d clients from static nginx: slowest %s s" % (
        cfg.clients, ", ".join("%.2f" % t for t in floor["slowest_all"])))
    rows.append(floor)

    for m in mirrors:
        for clients, reps in ((1, 1), (cfg.clients, cfg.reps)):
            row = {"who": m.name, "clients": clients, "reps": reps, "slowest_all": [],
                   "median_all": [], "ttfb_all": [], "blob_gets_all": [], "bytes_x_all": [],
                   "rss_all": [], "cpu_all": [], "errors": [], "direct": t_direct,
                   "upstream_all": []}
            for rep in range(reps):
                try:
                    m.start()
                except Exception as e:  # noqa: BLE001
                    row["errors"].append("start failed: %s; log: %s" % (e, " | ".join(m.log_tail())))
                    m.stop()
                    break
                mark = nginx.mark()
                w = Watch(m.pids())
                res = fan_out(m.port, blob.url, clients, client_timeout, run_timeout)
                idle = nginx.wait_idle()
                stats = w.stop()
                alive = m.alive()
                m.stop()
                up = summarize_upstream(nginx.requests_since(mark), blob)
                errs = check_results(res, blob)
                if not alive:
                    errs.append("mirror died during the run (exit %s)" % m_exit(m))
                if not idle:
                    errs.append("upstream still sending 60 s after the clients finished")
                times = [r["time"] for r in res if r.get("time") is not None]
                ttfbs = [r["ttfb"] for r in res if r.get("ttfb") is not None]
                row["slowest_all"].append(max(times) if times else None)
                row["median_all"].append(statistics.median(times) if times else None)
                row["ttfb_all"].append(max(ttfbs) if ttfbs else None)
                row["blob_gets_all"].append(up["blob_gets"])
                row["bytes_x_all"].append(up["blob_bytes"] / blob.size)
                row["rss_all"].append(stats["rss_mib"])
                row["cpu_all"].append(stats["cpu_s"])
                row["upstream_all"].append(up["requests"])
                row["errors"] += ["rep %d: %s" % (rep + 1, e) for e in errs[:8]]
                if len(errs) > 8:
                    row["errors"].append("rep %d: ... %d more" % (rep + 1, len(errs) - 8))
                log("%s cold x%d rep %d: slowest %.2fs, median %.2fs, upstream GETs %d (%.2fx bytes), "
                    "RSS %.1f MiB, %d errors" % (
                        m.name, clients, rep + 1, max(times) if times else -1,
                        statistics.median(times) if times else -1, up["blob_gets"],
                        up["blob_bytes"] / blob.size, stats["rss_mib"], len(errs)))
                for e in errs[:5]:
                    log("   " + e)
            ok = [x for x in row["slowest_all"] if x is not None]
            row["slowest"] = statistics.median(ok) if ok else None
            okm = [x for x in row["median_all"] if x is not None]
            row["median"] = statistics.median(okm) if okm else None
            row["ttfb"] = max([x for x in row["ttfb_all"] if x is not None], default=None)
            row["blob_gets"] = row["blob_gets_all"]
            row["bytes_x"] = max(row["bytes_x_all"], default=None)
            row["rss"] = max(row["rss_all"], default=None)
            row["cpu"] = statistics.median(row["cpu_all"]) if row["cpu_all"] else None
            rows.append(row)
    return rows


def m_exit(m):
    return m.proc.returncode if m.proc is not None else "?"


def warm_mirror(m, nginx, blob, manifest):
    """Fills the mirror's cache with the blob and the tag; checks the bytes
    and that a second GET does not reach the upstream."""
    notes = []
    err = verify_full(m.port, blob.url, blob)
    if err:
        return "warm-up GET: " + err, notes
    # A mirror may still be committing the blob when the first GET ends
    # (distribution stores it from a second, background fetch): GET again,
    # at most 4 times, until a GET is answered without the upstream.
    for attempt in range(1, 5):
        if not nginx.wait_idle():
            return "upstream still busy 60 s after a warm-up GET", notes
        time.sleep(0.5 * (attempt - 1))
        mark = nginx.mark()
        err = verify_full(m.port, blob.url, blob)
        if err:
            return "warm-up GET %d: %s" % (attempt + 1, err), notes
        up = summarize_upstream(nginx.requests_since(mark), blob)
        if not up["blob_gets"]:
            break
        notes.append("warm-up GET %d of the blob still fetched it upstream (%d GETs)"
                     % (attempt + 1, up["blob_gets"]))
    else:
        return "the blob was never served from the cache during warm-up", notes
    nginx.wait_idle()
    return None, notes


def check_manifest(port, manifest, manifest_hex):
    st, h, body = http_get(port, "/v2/%s/manifests/latest" % REPO, headers={"Accept": ACCEPT})
    problems = []
    if st != 200:
        return ["GET manifest by tag: HTTP %d" % st]
    if body != manifest:
        problems.append("GET manifest by tag: body differs from upstream (%d bytes, want %d)"
                        % (len(body), len(manifest)))
    if h.get("docker-content-digest") != "sha256:" + manifest_hex:
        problems.append("GET manifest: Docker-Content-Digest %r" % h.get("docker-content-digest"))
    if h.get("content-type") != OCI_MANIFEST:
        problems.append("GET manifest: Content-Type %r" % h.get("content-type"))
    st, h, _ = http_get(port, "/v2/%s/manifests/latest" % REPO, headers={"Accept": ACCEPT},
                        method="HEAD")
    if st != 200:
        problems.append("HEAD manifest by tag: HTTP %d" % st)
    elif h.get("docker-content-digest") != "sha256:" + manifest_hex:
        problems.append("HEAD manifest: Docker-Content-Digest %r" % h.get("docker-content-digest"))
    return problems


def run_warm(cfg, nginx, blob, manifest, manifest_hex, targets):
    """Runs 2 and 3 for each target. Returns (blob rows, manifest rows)."""
    blob_rows, man_rows = [], []
    for t in targets:
        brow = {"who": t.name, "errors": [], "notes": []}
        mrow = {"who": t.name, "errors": [], "notes": []}
        blob_rows.append(brow)
        man_rows.append(mrow)
        started = False
        try:
            if isinstance(t, Mirror):
                t.start()
                started = True
                err, notes = warm_mirror(t, nginx, blob, manifest)
                brow["notes"] += notes
                if err:
                    brow["errors"].append(err)
            else:
                err = verify_full(t.port, blob.url, blob)
                if err:
                    brow["errors"].append(err)
        except Exception as e:  # noqa: BLE001
            brow["errors"].append("start/warm-up failed: %s; log: %s" % (
                e, " | ".join(t.log_tail()) if isinstance(t, Mirror) else ""))
            mrow["errors"].append("not run: the blob run could not start")
            if started:
                t.stop()
            continue

        # run 2: warm blob throughput
        if not brow["errors"]:
            mark = nginx.mark()
            w = Watch(t.pids())
            lg = LoadgenCpu()
            r = blob_throughput(t.port, blob.url, cfg.blob_conns, cfg.duration, blob.size)
            brow["loadgen_cpu"] = lg.stop()
            stats = w.stop()
            up = summarize_upstream(nginx.requests_since(mark))
            brow.update(mib_s=r["mib_s"], responses=r["responses"], rss=stats["rss_mib"],
                        cpu=stats["cpu_s"], upstream=up["requests"], elapsed=r["elapsed"])
            brow["errors"] += r["errors"][:8]
            if not t.alive():
                brow["errors"].append("server died during the run")
            log("%s warm blob: %.0f MiB/s, %d responses, RSS %.1f MiB, server CPU %.1fs, "
                "load-gen CPU %.1fs, upstream requests %d, %d errors" % (
                    t.name, r["mib_s"], r["responses"], stats["rss_mib"], stats["cpu_s"],
                    brow["loadgen_cpu"], up["requests"], len(r["errors"])))
            for e in r["errors"][:5]:
                log("   " + e)

        # run 3: warm manifest by tag
        try:
            if isinstance(t, Mirror):
                # fill (or refresh) the tag right before the run: it is within
                # its TTL for the whole run
                problems = check_manifest(t.port, manifest, manifest_hex)
                nginx.wait_idle()
            else:
                problems = check_manifest(t.port, manifest, manifest_hex)
            if problems:
                mrow["errors"] += problems
            mark = nginx.mark()
            w = Watch(t.pids())
            lg = LoadgenCpu()
            r = run_wrk(t.port, "/v2/%s/manifests/latest" % REPO, cfg.manifest_conns,
                        2, cfg.duration)
            mrow["loadgen_cpu"] = lg.stop()
            stats = w.stop()
            up = summarize_upstream(nginx.requests_since(mark))
            mrow.update(rps=r["rps"], p50=r["p50"], p99=r["p99"], requests=r["requests"],
                        rss=stats["rss_mib"], cpu=stats["cpu_s"], upstream=up["requests"],
                        upstream_detail=up)
            if r["rps"] is None:
                mrow["errors"].append("wrk output not understood: " + r["raw"][-300:])
            if r["non2xx"]:
                mrow["errors"].append("%d non-2xx responses" % r["non2xx"])
            if r["socket_errors"]:
                mrow["errors"].append("wrk socket errors: " + r["socket_errors"])
            if not t.alive():
                mrow["errors"].append("server died during the run")
            # the tag must still answer correctly after the load
            if not mrow["errors"]:
                mrow["errors"] += ["after the run: " + p for p in
                                   check_manifest(t.port, manifest, manifest_hex)]
            log("%s warm manifest: %s req/s, p99 %s ms, upstream requests %d, RSS %.1f MiB, "
                "%d errors" % (t.name, r["rps"], r["p99"], up["requests"], stats["rss_mib"],
                               len(mrow["errors"])))
            for e in mrow["errors"][:5]:
                log("   " + e)
        except Exception as e:  # noqa: BLE001
            mrow["errors"].append("%s: %s" % (type(e).__name__, e))
        if isinstance(t, Mirror):
            t.stop()
    return blob_rows, man_rows


# --------------------------------------------------------------------------
# report

def f(x, fmt="%.2f", none="–"):
    return none if x is None else fmt % x


def ratio(a, b, fmt="%.2fx"):
    if a is None or b is None or b == 0:
        return "–"
    return fmt % (a / b)


def machine_info():
    mem = "?"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "mem": mem, "cpu": cpu,
            "kernel": platform.release()}


def loadavg():
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError):
        return None


def busy_others():
    """Names of CPU-heavy processes this driver did not start (compilers etc.)."""
    ours = set(PROCS.live) | {os.getpid()}
    names = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in ours:
            continue
        try:
            with open("/proc/%s/comm" % d) as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in ("rustc", "cargo", "cc", "ld", "cc1", "docker-registry", "nginx",
                    "pullthrough", "wrk", "dockerd", "containerd", "skopeo") \
                and not any(pid_is_child(int(d), p) for p in ours):
            names[comm] = names.get(comm, 0) + 1
    return names


def pid_is_child(pid, parent):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            st = fh.read()
        return int(st[st.rindex(")") + 2:].split()[1]) == parent
    except (OSError, ValueError):
        return False


def version(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=10).stdout.decode(errors="replace").strip()
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=10).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               timeout=10).stdout.decode().strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def report(cfg, cold_rows, blob_rows, man_rows, sizes, manifest_len, wall, binary):
    out = []
    p = out.append
    mi = machine_info()
    p("## Results (%s)" % ("quick smoke run" if cfg.quick else "full run"))
    p("")
    p("- command: `%s`" % " ".join(["python3", "benches/run.py"] + sys.argv[1:]))
    p("- date: %s" % datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    p("- machine: %s CPUs (%s), %s RAM, Linux %s; load generator, mirror and upstream "
      "share these CPUs" % (mi["nproc"], mi["cpu"], mi["mem"], mi["kernel"]))
    if binary:
        shown = os.path.relpath(binary, REPO_ROOT)
        if shown.startswith(".."):
            shown = binary
        built = datetime.datetime.fromtimestamp(os.path.getmtime(binary)).astimezone()
        p("- pullthrough: `%s` (%s, built %s); the checkout is at git %s" % (
            shown, version([binary, "--version"]), built.strftime("%Y-%m-%d %H:%M %Z"),
            git_rev()))
    else:
        p("- pullthrough: not run")
    la0, la1 = cfg.load_start, loadavg()
    others = ", ".join("%d %s" % (v, k) for k, v in sorted(cfg.busy_start.items()))
    p("- machine load: 1-min load average %s at start, %s at end%s" % (
        f(la0), f(la1), "; other processes running at start: " + others if others else ""))
    p("- peers: %s; %s; %s" % (version(["docker-registry", "--version"]),
                               version(["nginx", "-v"]), version(["wrk", "-v"])))
    p("- upstream: nginx, blobs limited to %s per connection (%.1f MiB/s); cold blob %d MiB, "
      "warm blob %d MiB, manifest %d bytes; wall time %.0f s"
      % (cfg.rate, cfg.rate_bytes / MiB, sizes[0] // MiB, sizes[1] // MiB, manifest_len, wall))
    p("")

    if cold_rows is not None:
        p("### 1. Cold fan-out: %d clients, one uncached %d MiB blob" % (cfg.clients, sizes[0] // MiB))
        p("")
        p("Fresh mirror process and empty cache per repetition; %d repetition(s) with %d "
          "clients, 1 with a single client. *slowest / direct* is the slowest client's time "
          "over one uncontended transfer straight from the upstream (median of the "
          "repetitions); *upstream bytes* is the body bytes the upstream sent for the blob, "
          "as a multiple of its size (worst repetition). The *floor* row is the same %d "
          "clients reading the same file from nginx with no rate limit: the fastest this "
          "machine and this load generator deliver %d x %d MiB, with no mirror in the way. "
          "Clients check length and CRC-32 of every body; times include connect." % (
              cfg.reps, cfg.clients, cfg.clients, cfg.clients, sizes[0] // MiB))
        p("")
        p("| server | clients | upstream blob GETs | all upstream requests | upstream bytes | "
          "slowest client | slowest / direct | median client | max TTFB | peak RSS | "
          "server CPU | errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in cold_rows:
            gets = r["blob_gets"]
            gets_s = str(gets) if isinstance(gets, int) else ", ".join(str(g) for g in gets) or "–"
            p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["who"], r["clients"], gets_s,
                ", ".join(str(x) for x in r["upstream_all"]) or "–", f(r["bytes_x"], "%.2fx"),
                f(r["slowest"], "%.2f s"), ratio(r["slowest"], r["direct"]),
                f(r["median"], "%.2f s"), f(r["ttfb"], "%.3f s"),
                f(r["rss"], "%.1f MiB"), f(r["cpu"], "%.1f s"),
                "none" if not r["errors"] else "%d (see below)" % len(r["errors"])))
        p("")
        multi = [r for r in cold_rows if r["reps"] > 1]
        if multi:
            p("Per repetition (slowest client, s): " + "; ".join(
                "%s x%d: %s" % (r["who"], r["clients"],
                                ", ".join(f(x) for x in r["slowest_all"]))
                for r in multi))
            p("")

    if blob_rows is not None:
        nginx_row = next((r for r in blob_rows if r["who"] == "nginx"), None)
        base = nginx_row.get("mib_s") if nginx_row else None
        p("### 2. Warm blob: %d connections GET a cached %d MiB blob for %d s"
          % (cfg.blob_conns, sizes[1] // MiB, cfg.duration))
        p("")
        p("Python client threads, keep-alive, 1 MiB `readinto`; bytes are counted up to the "
          "end of the window. Peak RSS is VmHWM reset just before the run (nginx: master + "
          "workers).")
        p("")
        p("| server | MiB/s | vs nginx | full responses | peak RSS | server CPU | "
          "load-gen CPU | upstream requests | errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in blob_rows:
            p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["who"], f(r.get("mib_s"), "%.0f"), ratio(r.get("mib_s"), base),
                f(r.get("responses"), "%d"), f(r.get("rss"), "%.1f MiB"),
                f(r.get("cpu"), "%.1f s"), f(r.get("loadgen_cpu"), "%.1f s"),
                f(r.get("upstream"), "%d"),
                "none" if not r["errors"] else "%d (see below)" % len(r["errors"])))
        p("")

    if man_rows is not None:
        nginx_row = next((r for r in man_rows if r["who"] == "nginx"), None)
        base = nginx_row.get("rps") if nginx_row else None
        p("### 3. Warm manifest by tag: wrk, %d connections, %d s" % (cfg.manifest_conns, cfg.duration))
        p("")
        p("`GET /v2/%s/manifests/latest` with an OCI `Accept` list; the tag was fetched "
          "just before the run, so it is within pullthrough's 60 s TTL. nginx serves the "
          "same %d-byte file. *upstream requests* counts every request the upstream saw "
          "during the run." % (REPO, manifest_len))
        p("")
        p("| server | req/s | vs nginx | p50 | p99 | upstream requests | peak RSS | "
          "server CPU | load-gen CPU | errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in man_rows:
            p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["who"], f(r.get("rps"), "%.0f"), ratio(r.get("rps"), base),
                f(r.get("p50"), "%.2f ms"), f(r.get("p99"), "%.2f ms"),
                describe_upstream(r["upstream_detail"]) if r.get("upstream_detail") else "–",
                f(r.get("rss"), "%.1f MiB"),
                f(r.get("cpu"), "%.1f s"), f(r.get("loadgen_cpu"), "%.1f s"),
                "none" if not r["errors"] else "%d (see below)" % len(r["errors"])))
        p("")

    # targets
    def row(rows, who, clients=None):
        for r in rows or []:
            if r["who"] == who and (clients is None or r.get("clients") == clients):
                return r
        return None

    pt_cold = row(cold_rows, "pullthrough", cfg.clients)
    pt_blob = row(blob_rows, "pullthrough")
    pt_man = row(man_rows, "pullthrough")
    ng_blob = row(blob_rows, "nginx")
    ng_man = row(man_rows, "nginx")
    checks = []

    def check(name, value, ok, target):
        checks.append("| %s | %s | %s | %s |" % (
            name, target, value, "–" if ok is None else ("yes" if ok else "**no**")))

    if pt_cold:
        bx = pt_cold.get("bytes_x")
        check("1. upstream bytes, %d cold clients" % cfg.clients,
              f(bx, "%.2fx"), None if bx is None else abs(bx - 1.0) < 1e-9 and not pt_cold["errors"],
              "exactly 1x")
        sr = pt_cold["slowest"] / pt_cold["direct"] if pt_cold.get("slowest") else None
        check("1. slowest client / direct transfer", f(sr, "%.2f"),
              None if sr is None else sr <= 1.2, "≤ 1.2")
        fl = row(cold_rows, "nginx static, no rate limit (floor)")
        if fl and fl.get("slowest") and pt_cold.get("slowest"):
            check("1. (context) floor: slowest client / direct with no mirror and no rate limit",
                  f(fl["slowest"] / fl["direct"], "%.2f"), None, "–")
    if pt_blob and ng_blob:
        rr = (pt_blob["mib_s"] / ng_blob["mib_s"]) if pt_blob.get("mib_s") and ng_blob.get("mib_s") else None
        check("2. warm blob MiB/s vs nginx", f(rr, "%.2f"),
              None if rr is None else rr >= 0.9 and not pt_blob["errors"], "≥ 0.9")
    if pt_man and ng_man:
        rr = (pt_man["rps"] / ng_man["rps"]) if pt_man.get("rps") and ng_man.get("rps") else None
        check("3. warm manifest req/s vs nginx", f(rr, "%.2f"),
              None if rr is None else rr >= 0.5 and not pt_man["errors"], "≥ 0.5")
    if pt_cold:
        check("4. peak RSS, run 1", f(pt_cold.get("rss"), "%.1f MiB"),
              None if pt_cold.get("rss") is None else pt_cold["rss"] < 64, "< 64 MiB")
    if pt_blob:
        check("4. peak RSS, run 2", f(pt_blob.get("rss"), "%.1f MiB"),
              None if pt_blob.get("rss") is None else pt_blob["rss"] < 64, "< 64 MiB")
    if pt_man:
        check("4. peak RSS, run 3 (no target)", f(pt_man.get("rss"), "%.1f MiB"), None, "–")
    if checks:
        p("### pullthrough against the targets")
        p("")
        p("| target | wanted | measured | met |")
        p("|---|---|---|---|")
        out.extend(checks)
        p("")

    problems = []
    for section, rows in (("run 1", cold_rows), ("run 2", blob_rows), ("run 3", man_rows)):
        for r in rows or []:
            label = "%s, %s%s" % (section, r["who"],
                                  " x%d" % r["clients"] if "clients" in r else "")
            for e in r.get("errors", []):
                problems.append("- %s: %s" % (label, e))
            for n in r.get("notes", []):
                problems.append("- %s (note): %s" % (label, n))
    if problems:
        p("### Errors and notes")
        p("")
        out.extend(problems)
        p("")
    return "\n".join(out)


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small blobs, 8 clients, 2 s windows")
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "pullthrough"),
                    help="pullthrough binary (default: target/release/pullthrough)")
    ap.add_argument("--servers", default="nginx,pullthrough,distribution",
                    help="comma list of nginx, pullthrough, distribution")
    ap.add_argument("--runs", default="1,2,3", help="comma list of 1 (cold), 2 (warm blob), "
                    "3 (warm manifest); peak RSS (4) is reported in each")
    ap.add_argument("--rate", default="50m", help="nginx limit_rate per upstream blob connection")
    ap.add_argument("--workdir", help="where to put blobs, configs, caches and logs "
                    "(default: a new temporary directory, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--output", help="also write the report to this file")
    cfg = ap.parse_args()

    if cfg.quick:
        cfg.cold_mib, cfg.warm_mib, cfg.clients, cfg.reps, cfg.duration = 20, 40, 8, 1, 2
    else:
        cfg.cold_mib, cfg.warm_mib, cfg.clients, cfg.reps, cfg.duration = 100, 200, 32, 3, 10
    cfg.blob_conns = 8
    cfg.manifest_conns = 32
    m = re.fullmatch(r"(\d+)([kKmM]?)", cfg.rate)
    if not m:
        ap.error("--rate: use nginx units like 50m")
    cfg.rate_bytes = int(m.group(1)) * {"": 1, "k": 1024, "m": MiB}[m.group(2).lower()]
    servers = [s.strip() for s in cfg.servers.split(",") if s.strip()]
    runs = {s.strip() for s in cfg.runs.split(",")}
    for s in servers:
        if s not in ("nginx", "pullthrough", "distribution"):
            ap.error("unknown server %r" % s)

    binary = None
    if "pullthrough" in servers:
        binary = os.path.abspath(cfg.binary)
        if not os.access(binary, os.X_OK):
            ap.error("%s not found: run `cargo build --release` first, or leave pullthrough "
                     "out with --servers nginx,distribution" % binary)
        Pullthrough.binary = binary
    for tool in ("nginx", "wrk") + (("docker-registry",) if "distribution" in servers else ()):
        if shutil.which(tool) is None:
            ap.error("%s is not installed (apt-get install nginx wrk docker-registry)" % tool)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    t_start = time.monotonic()
    cfg.load_start = loadavg()
    cfg.busy_start = busy_others()
    if cfg.busy_start or (cfg.load_start or 0) > 1.0:
        log("warning: machine busy (load %.2f; %s): numbers will be noisy" % (
            cfg.load_start or -1, cfg.busy_start))
    work = os.path.abspath(cfg.workdir) if cfg.workdir else tempfile.mkdtemp(prefix="pullthrough-bench-")
    os.makedirs(os.path.join(work, "data", "blobs"), exist_ok=True)
    log("work directory %s" % work)
    nginx = None
    try:
        data = os.path.join(work, "data")
        log("writing random blobs (%d MiB cold, %d MiB warm)" % (cfg.cold_mib, cfg.warm_mib))
        cold = Blob(data, cfg.cold_mib * MiB, "cold")
        warm = Blob(data, cfg.warm_mib * MiB, "warm")
        manifest, manifest_hex = make_manifest(data)
        nginx = Nginx(work, data, manifest_hex, cfg.rate)
        st, h, body = http_get(nginx.upstream_port, "/v2/%s/manifests/latest" % REPO, method="HEAD")
        if st != 200 or h.get("docker-content-digest") != "sha256:" + manifest_hex:
            raise RuntimeError("upstream HEAD manifest: %d %r" % (st, h))

        mirrors = []
        if "pullthrough" in servers:
            mirrors.append(Pullthrough(work, nginx.upstream_port))
        if "distribution" in servers:
            mirrors.append(Distribution(work, nginx.upstream_port))

        cold_rows = blob_rows = man_rows = None
        if "1" in runs and mirrors:
            log("run 1: cold fan-out")
            cold_rows = run_cold(cfg, nginx, cold, mirrors)
        if runs & {"2", "3"}:
            log("runs 2 and 3: warm blob and warm manifest")
            targets = ([StaticNginx(nginx)] if "nginx" in servers else []) + mirrors
            blob_rows, man_rows = run_warm(cfg, nginx, warm, manifest, manifest_hex, targets)
            if "2" not in runs:
                blob_rows = None
            if "3" not in runs:
                man_rows = None
        text = report(cfg, cold_rows, blob_rows, man_rows, (cold.size, warm.size),
                      len(manifest), time.monotonic() - t_start, binary)
        print(text)
        if cfg.output:
            with open(cfg.output, "w") as fh:
                fh.write(text + "\n")
    finally:
        PROCS.stop_all()
        if cfg.keep or cfg.workdir:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
