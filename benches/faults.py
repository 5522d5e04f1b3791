#!/usr/bin/env python3
"""Fault-injection benchmark for pullthrough (issue 17, "Kept fixed").

    python3 benches/faults.py              # full run, a few minutes
    python3 benches/faults.py --quick      # smoke run, about a minute

A flaky network between the mirror and its upstream must never turn into
a wrong transfer. Everything runs on 127.0.0.1:

  upstream   docker-registry (distribution 2.8), seeded with skopeo from OCI
             layouts this script writes (real tar layers of random bytes).
  proxy      a TCP proxy (asyncio, in this process) between the mirror and
             the upstream. Into --fault-share of the responses that have a
             body (decided per response, as the mirror reuses connections)
             it injects one fault: reset (RST),
             stall (black-hole: nothing more in either direction until the
             mirror hangs up, at most --stall-max s), truncate (a clean FIN
             mid-body) or flip (one byte of the body XORed; the connection
             goes on). One in five resets, stalls and truncations comes
             before the response's first byte. A fault that could not be
             placed (the connection closed first) is not counted.
  mirror     target/release/pullthrough, upstream = the proxy, upstream
             read_timeout = --read-timeout. Killed with SIGKILL once
             --kill-at of the planned transfers are done, and restarted at
             once on the same port and cache directory.
  clients    --clients threads at once: half run `skopeo copy` of each image
             (into a fresh dir:, every file then hashed), half GET each
             image's manifest by tag and its blobs directly (sha256 and
             length checked). Each transfer gets --attempts tries.

A transfer is *right* when one of its tries completed with the right
bytes, *failed* when none did. A try that completed (skopeo exit 0; HTTP
200 read to its end) with other bytes counts as *wrong bytes*: that must
be 0, and the script exits 1 otherwise. After the run the mirror is
stopped, every file in its cache is hashed against its name, and a last
pass without faults GETs every blob once more.

Metrics read from the mirror's /metrics (summed over both of its lives,
"n/a" when the mirror does not export them):
pullthrough_download_resumes_total, pullthrough_download_restarts_total,
pullthrough_digest_mismatches_total.

Python 3 standard library only. Every process is started and stopped by
PID, every loop is bounded in count and time.
"""

import argparse
import asyncio
import collections
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

# run.py is shared for its process and report helpers; no .pyc beside it.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PROCS, free_port, http_get, log, machine_info, loadavg, busy_others  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
KiB, MiB = 1 << 10, 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
KINDS = ("reset", "stall", "truncate", "flip")
METRICS = ("pullthrough_download_resumes_total", "pullthrough_download_restarts_total",
           "pullthrough_digest_mismatches_total")


# --------------------------------------------------------------------------
# test images: OCI layouts, seeded into docker-registry with skopeo

def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Image:
    def __init__(self, root, name, layer_sizes, rng):
        self.name = "library/" + name
        self.layout = os.path.join(root, "layout-" + name)
        blobs = os.path.join(self.layout, "blobs", "sha256")
        os.makedirs(blobs)
        self.blobs = {}  # hex -> size

        def put(data):
            h = sha256(data)
            with open(os.path.join(blobs, h), "wb") as fh:
                fh.write(data)
            self.blobs[h] = len(data)
            return {"digest": "sha256:" + h, "size": len(data)}

        layers = []
        diff_ids = []
        for i, size in enumerate(layer_sizes):
            # A real (uncompressed) tar of one file of random bytes.
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                info = tarfile.TarInfo("layer%d.bin" % i)
                info.size = size
                info.mtime = 0
                tar.addfile(info, io.BytesIO(rng.randbytes(size)))
            d = put(buf.getvalue())
            layers.append(dict(mediaType="application/vnd.oci.image.layer.v1.tar", **d))
            diff_ids.append(d["digest"])
        config = put(json.dumps({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {},
        }, separators=(",", ":")).encode())
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **config),
            "layers": layers,
        }, indent=2).encode() + b"\n"
        self.manifest_hex = put(self.manifest)["digest"][len("sha256:"):]
        del self.blobs[self.manifest_hex]  # served as a manifest, not a blob
        with open(os.path.join(self.layout, "oci-layout"), "w") as fh:
            json.dump({"imageLayoutVersion": "1.0.0"}, fh)
        with open(os.path.join(self.layout, "index.json"), "w") as fh:
            json.dump({"schemaVersion": 2, "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": "sha256:" + self.manifest_hex,
                "size": len(self.manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, fh)

    def bytes_total(self):
        return sum(self.blobs.values())


class Registry:
    def __init__(self, work):
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir)
        self.port = free_port()
        conf = os.path.join(self.dir, "config.yml")
        with open(conf, "w") as fh:
            fh.write("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                     "storage:\n  filesystem:\n    rootdirectory: %s\n"
                     "http:\n  addr: 127.0.0.1:%d\n" % (os.path.join(self.dir, "storage"), self.port))
        self.proc = PROCS.start("docker-registry", ["docker-registry", "serve", conf],
                                os.path.join(self.dir, "log.txt"))
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(self.port, "/v2/", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("docker-registry did not start; see %s" % self.dir)
            time.sleep(0.05)

    def seed(self, image):
        # --preserve-digests: skopeo would otherwise gzip the tar layers on
        # the way to a docker:// destination, changing every digest.
        run_bounded(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                     "oci:%s:v1" % image.layout,
                     "docker://127.0.0.1:%d/%s:v1" % (self.port, image.name)], 120, check=True)
        st, h, _ = http_get(self.port, "/v2/%s/manifests/v1" % image.name, method="HEAD",
                            headers={"Accept": ACCEPT})
        if st != 200 or h.get("docker-content-digest") != "sha256:" + image.manifest_hex:
            raise RuntimeError("seeding %s: HEAD answered %d %r" % (image.name, st, h))

    def stop(self):
        PROCS.stop(self.proc)


def run_bounded(argv, timeout, check=False):
    """Runs argv to completion within timeout s (its process group is
    killed, by PID, if not); returns (returncode or None, output)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=10)
        rc = None
    out = out.decode(errors="replace").strip()
    if check and rc != 0:
        raise RuntimeError("%s: exit %s: %s" % (" ".join(argv[:2]), rc, out))
    return rc, out


# --------------------------------------------------------------------------
# the fault-injecting proxy

class FaultProxy:
    """Forwards 127.0.0.1:port to the upstream and injects a fault into a
    share of the upstream's responses that have a body. Decided per
    response, not per connection: the mirror keeps its upstream
    connections alive, so a handful of connections carry every request.

    It follows HTTP/1.1 framing just enough to place faults in bodies: the
    requests' methods and paths (the mirror sends no request bodies) tell
    it which responses are HEADs, Content-Length how long each body is; a
    chunked or unparsable response switches the connection to raw
    forwarding (faults then land at a byte offset)."""

    def __init__(self, upstream_port, share, seed, stall_max):
        self.upstream_port = upstream_port
        self.share = share
        self.rng = random.Random(seed)
        self.stall_max = stall_max
        self.port = free_port()
        self.lock = threading.Lock()
        self.stats = collections.Counter()
        self.faults = collections.Counter()  # (kind, what) -> n
        self.loop = None
        self.thread = None
        self.tasks = set()

    def start(self):
        ready = threading.Event()

        def main():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", self.port, reuse_address=True))
            ready.set()
            self.loop.run_forever()
            # stop(): close what is left, within bounds
            self.server.close()
            tasks = list(self.tasks)
            for t in tasks:
                t.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=5))
            self.loop.close()

        self.thread = threading.Thread(target=main, daemon=True, name="fault-proxy")
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        log("fault proxy on 127.0.0.1:%d -> %d, share %.2f" % (self.port, self.upstream_port, self.share))

    def set_share(self, share):
        with self.lock:
            self.share = share

    def stop(self):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def choose(self):
        with self.lock:
            if self.rng.random() >= self.share:
                return None
            kind = self.rng.choice(KINDS)
            # One stall, reset or truncation in five comes before the first
            # byte of the response (a black-holed or refused request); the
            # rest mid-body.
            at_start = kind != "flip" and self.rng.random() < 0.2
            return {"kind": kind, "at_start": at_start, "frac": self.rng.random(),
                    "mask": 1 << self.rng.randrange(8)}

    async def handle(self, creader, cwriter):
        task = asyncio.current_task()
        self.tasks.add(task)
        self.count("connections")
        uwriter = None
        try:
            try:
                ureader, uwriter = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.upstream_port), 10)
            except (OSError, asyncio.TimeoutError):
                self.count("upstream_connect_errors")
                return
            requests = collections.deque()
            state = {"stalled": False, "closed": False}
            up = asyncio.ensure_future(self.pipe_requests(creader, uwriter, requests, state))
            try:
                await self.pipe_responses(ureader, cwriter, creader, requests, state)
            finally:
                up.cancel()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (cwriter, uwriter):
                if w is not None and not w.is_closing():
                    w.close()
            self.tasks.discard(task)

    async def pipe_requests(self, src, dst, requests, state):
        """Mirror → upstream: forwarded as is (until a stall), noting each
        request's method and path."""
        head = b""
        try:
            while True:
                data = await src.read(64 * KiB)
                if not data:
                    state["closed"] = True
                    if not state["stalled"] and dst.can_write_eof() and not dst.is_closing():
                        dst.write_eof()
                    return
                if state["stalled"]:
                    continue
                head += data
                while b"\r\n\r\n" in head:
                    one, head = head.split(b"\r\n\r\n", 1)
                    parts = one.split(b"\r\n", 1)[0].split(b" ")
                    requests.append((parts[0].decode(errors="replace"),
                                     parts[1].decode(errors="replace") if len(parts) > 1 else ""))
                head = head[-64 * KiB:]
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            state["closed"] = True

    @staticmethod
    def what(path):
        if "/blobs/" in path:
            return "blob"
        if "/manifests/" in path:
            return "manifest"
        return "other"

    async def pipe_responses(self, src, dst, client_reader, requests, state):
        """Upstream → mirror: each response with a body gets a fault with
        probability `share`; all but a flip end the connection."""
        buf = b""
        fault = None
        mode = "head"      # head | body | raw
        remaining = 0      # body bytes left of the current response
        armed = None       # body offset (in this response) where the fault hits
        what = "other"
        while True:
            data = await src.read(256 * KiB)
            if not data:
                break
            buf += data
            out = []
            while buf:
                if mode == "head":
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > 64 * KiB:
                            mode = "raw"
                            continue
                        break
                    head, buf = buf[:end + 4], buf[end + 4:]
                    method, path = requests.popleft() if requests else ("GET", "")
                    status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                    chunked = re.search(rb"(?im)^transfer-encoding:.*chunked", head) is not None
                    if method == "HEAD" or status in (b"204", b"304"):
                        length = 0
                    elif chunked or m is None:
                        length = None
                    else:
                        length = int(m.group(1))
                    if length is None or length > 0:
                        self.count("responses")
                        fault, armed = self.choose(), None
                    if fault is not None:
                        what = self.what(path)
                        if fault["at_start"]:
                            # before the response's first byte
                            dst.write(b"".join(out))
                            await self.apply(fault, dst, client_reader, state, what)
                            return
                        span = length if length is not None else 64 * KiB
                        armed = int(fault["frac"] * span)
                    out.append(head)
                    if length is None:
                        mode = "raw"
                        remaining = None
                    elif length > 0:
                        mode, remaining = "body", length
                    continue
                # body or raw: forward up to the end of the body (raw: all)
                n = len(buf) if mode == "raw" else min(remaining, len(buf))
                chunk, buf = buf[:n], buf[n:]
                if armed is not None and armed < n:
                    if fault["kind"] == "flip":
                        chunk = chunk[:armed] + bytes([chunk[armed] ^ fault["mask"]]) + chunk[armed + 1:]
                        self.note_fault("flip", what)
                        fault, armed = None, None
                    else:
                        out.append(chunk[:armed])
                        dst.write(b"".join(out))
                        await self.apply(fault, dst, client_reader, state, what)
                        return
                elif armed is not None:
                    armed -= n
                out.append(chunk)
                if mode == "body":
                    remaining -= n
                    if remaining == 0:
                        mode = "head"
            if out:
                payload = b"".join(out)
                self.count("bytes", len(payload))
                dst.write(payload)
                await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()

    def note_fault(self, kind, what):
        with self.lock:
            self.faults[(kind, what)] += 1

    async def apply(self, fault, dst, client_reader, state, what):
        kind = fault["kind"]
        self.note_fault(kind, what)
        try:
            await dst.drain()
        except (ConnectionError, OSError):
            return
        if kind == "reset":
            sock = dst.get_extra_info("socket")
            if sock is not None:
                # linger 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            dst.transport.abort()
        elif kind == "truncate":
            dst.close()
        elif kind == "stall":
            # Black hole: nothing more either way until the mirror gives up
            # (closes its end) or stall_max passes.
            state["stalled"] = True
            deadline = time.monotonic() + self.stall_max
            while not state["closed"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            dst.close()


# --------------------------------------------------------------------------
# the mirror

class Mirror:
    def __init__(self, work, binary, upstream_port, read_timeout):
        self.dir = os.path.join(work, "pullthrough")
        self.cache_dir = os.path.join(self.dir, "cache")
        os.makedirs(self.dir)
        self.binary = binary
        self.port = free_port()
        self.upstream_port = upstream_port
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as fh:
            fh.write("[[upstream]]\nread_timeout = \"%ds\"\n" % read_timeout)
        self.proc = None
        self.lives = 0
        self.metrics_before = {}

    def start(self):
        self.lives += 1
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        argv = [self.binary, "serve", "--config", self.config,
                "--listen", "127.0.0.1:%d" % self.port, "--cache-dir", self.cache_dir,
                "--upstream", "http://127.0.0.1:%d" % self.upstream_port]
        self.proc = PROCS.start("pullthrough", argv, os.path.join(self.dir, "log.txt"), env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_get(self.port, "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("pullthrough exited with %s; see %s/log.txt"
                                   % (self.proc.returncode, self.dir))
            if time.monotonic() > deadline:
                raise RuntimeError("pullthrough not ready after 60 s")
            time.sleep(0.05)

    def metrics(self):
        """The counters in METRICS, summed over labels; None if absent."""
        try:
            st, _, body = http_get(self.port, "/metrics", timeout=5)
        except OSError:
            return {}
        if st != 200:
            return {}
        out = {}
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if m and m.group(1) in METRICS:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def kill9(self):
        self.metrics_before = self.metrics()
        PROCS.stop(self.proc, sig=signal.SIGKILL)

    def stop(self):
        PROCS.stop(self.proc)


# --------------------------------------------------------------------------
# clients

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.wrong = []
        self.failures = collections.Counter()
        self.done = 0

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def wrong_bytes(self, what):
        with self.lock:
            self.c["wrong"] += 1
            self.wrong.append(what)
        log("WRONG BYTES: %s" % what)

    def failed_try(self, why):
        # Digests and addresses vary; the kind of failure is what matters.
        with self.lock:
            self.failures[re.sub(r"[0-9a-f]{5,}|\d+\.\d+\.\d+\.\d+:\d+", "…", why)[:120]] += 1


def get_once(port, path, want_hex, want_len, timeout, accept=None):
    """One GET on a new connection: 'right', 'wrong' or 'failed: why'."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Accept": accept} if accept else {})
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return "failed: HTTP %d" % r.status
        promised = r.getheader("Content-Length")
        h = hashlib.sha256()
        n = 0
        while True:
            # read(amt) returns b"" when the connection ends early, even
            # short of Content-Length (a chunked body raises IncompleteRead).
            chunk = r.read(MiB)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if promised is not None and n != int(promised):
            return "failed: body ended short of Content-Length"
        # The response completed as far as HTTP can tell.
        if h.hexdigest() != want_hex or n != want_len:
            return "wrong"
        return "right"
    except Exception as e:  # noqa: BLE001 - a failed try, reported by kind
        return "failed: %s" % type(e).__name__
    finally:
        c.close()


def skopeo_once(port, image, scratch, timeout):
    out = os.path.join(scratch, "copy")
    shutil.rmtree(out, ignore_errors=True)
    try:
        # --retry-times 0: the tries are counted here, not hidden in skopeo.
        rc, text = run_bounded(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                "--retry-times", "0",
                                "docker://127.0.0.1:%d/%s:v1" % (port, image.name),
                                "dir:" + out], timeout)
        if rc is None:
            return "failed: skopeo timed out"
        if rc != 0:
            m = re.search(r"(reading blob|reading manifest|connection refused|EOF|reset|"
                          r"timeout|digest|unexpected|invalid)[^\n]{0,40}", text, re.I)
            return "failed: skopeo exit %d (%s)" % (rc, m.group(0) if m else text[-80:])
        with open(os.path.join(out, "manifest.json"), "rb") as fh:
            if fh.read() != image.manifest:
                return "wrong"
        for hexd in image.blobs:
            try:
                with open(os.path.join(out, hexd), "rb") as fh:
                    if sha256(fh.read()) != hexd:
                        return "wrong"
            except FileNotFoundError:
                return "wrong"
        return "right"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def transfer(cfg, tally, mirror, kind, label, once):
    """Up to cfg.attempts tries of one transfer, with backoff."""
    for attempt in range(cfg.attempts):
        if time.monotonic() > cfg.deadline:
            tally.add(kind + "_failed")
            tally.failed_try("run deadline")
            return
        outcome = once()
        tally.add("tries")
        if outcome == "right":
            tally.add(kind + "_right")
            if attempt:
                tally.add(kind + "_right_after_retry")
            return
        if outcome == "wrong":
            tally.wrong_bytes("%s %s (try %d)" % (kind, label, attempt + 1))
        else:
            tally.failed_try(outcome)
        time.sleep(min(4.0, 0.5 * 2 ** attempt))
    tally.add(kind + "_failed")


def client(cfg, i, tally, mirror, images, scratch):
    rng = random.Random(cfg.seed * 1000 + i)
    order = list(images)
    rng.shuffle(order)
    use_skopeo = i % 2 == 0
    for image in order:
        if use_skopeo:
            transfer(cfg, tally, mirror, "skopeo", image.name,
                     lambda: skopeo_once(mirror.port, image, scratch, cfg.try_timeout))
            with tally.lock:
                tally.done += 1
            continue
        transfer(cfg, tally, mirror, "manifest", image.name,
                 lambda: get_once(mirror.port, "/v2/%s/manifests/v1" % image.name,
                                  image.manifest_hex, len(image.manifest), cfg.try_timeout,
                                  accept=ACCEPT))
        blobs = list(image.blobs.items())
        rng.shuffle(blobs)
        for hexd, size in blobs:
            transfer(cfg, tally, mirror, "blob", hexd[:12],
                     lambda: get_once(mirror.port, "/v2/%s/blobs/sha256:%s" % (image.name, hexd),
                                      hexd, size, cfg.try_timeout))
        with tally.lock:
            tally.done += 1


def chaos(cfg, tally, mirror, planned, events, stop):
    """kill -9 the mirror once cfg.kill_at of the image transfers are done,
    then restart it on the same port and cache."""
    if cfg.kill_at <= 0:
        return
    while not stop.is_set() and time.monotonic() < cfg.deadline:
        with tally.lock:
            done = tally.done
        if done >= cfg.kill_at * planned:
            t0 = time.monotonic()
            mirror.kill9()
            log("kill -9 of the mirror after %d of %d image transfers" % (done, planned))
            mirror.start()
            events.append({"done": done, "down_s": time.monotonic() - t0,
                           "at_s": t0 - cfg.t0})
            log("mirror back after %.2f s" % (time.monotonic() - t0))
            return
        stop.wait(0.05)


def verify_cache(cache_dir):
    """Every file under blobs/ must hash to its name."""
    n = bad = 0
    root = os.path.join(cache_dir, "blobs", "sha256")
    for dirpath, _, files in os.walk(root):
        for name in files:
            n += 1
            h = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb") as fh:
                for chunk in iter(lambda: fh.read(MiB), b""):
                    h.update(chunk)
            if h.hexdigest() != name:
                bad += 1
                log("cache file with wrong bytes: %s" % os.path.join(dirpath, name))
    return n, bad


# --------------------------------------------------------------------------
# report

def report(cfg, images, proxy, tally, events, mirror, metrics, cache, final, elapsed, binary):
    out = []
    p = out.append
    mi = machine_info()
    c = tally.c
    p("## Fault injection run, %s" % time.strftime("%Y-%m-%d %H:%M"))
    p("")
    p("Machine: %s cores (%s), %s RAM, Linux %s; load average at start %.2f%s. Binary: `%s`."
      % (mi["nproc"], mi["cpu"], mi["mem"], mi["kernel"], cfg.load_start or -1,
         "; also running: %s" % ", ".join("%s x%d" % kv for kv in sorted(cfg.busy_start.items()))
         if cfg.busy_start else "", os.path.relpath(binary, REPO_ROOT)))
    p("")
    nblobs = sum(len(im.blobs) for im in images)
    p("%d images (%d blobs, %.1f MiB) seeded into docker-registry; %d clients (%d skopeo, %d "
      "direct GET), %d tries per transfer; fault share %.2f of upstream responses; upstream "
      "read_timeout %d s; kill -9 after %s of the image transfers; seed %d; %.0f s in all."
      % (len(images), nblobs, sum(im.bytes_total() for im in images) / MiB, cfg.clients,
         (cfg.clients + 1) // 2, cfg.clients // 2, cfg.attempts, cfg.fault_share,
         cfg.read_timeout, "%.0f %%" % (100 * cfg.kill_at) if cfg.kill_at > 0 else "none",
         cfg.seed, elapsed))
    p("")
    p("| faults injected | blob | manifest | other | total |")
    p("|---|---:|---:|---:|---:|")
    for kind in KINDS:
        row = [proxy.faults.get((kind, w), 0) for w in ("blob", "manifest", "other")]
        p("| %s | %d | %d | %d | %d |" % (kind, row[0], row[1], row[2], sum(row)))
    p("| **all** (of %d responses with a body, on %d connections) | %d | %d | %d | **%d** |" % (
        proxy.stats["responses"], proxy.stats["connections"],
        *[sum(proxy.faults.get((k, w), 0) for k in KINDS) for w in ("blob", "manifest", "other")],
        sum(proxy.faults.values())))
    p("")

    def met(name):
        vals = [m.get(name) for m in metrics]
        if not metrics:
            return "– (no mirror)"
        if all(v is None for v in vals):
            return "n/a (not exported)"
        return "%d" % sum(v or 0 for v in vals)

    right = c["skopeo_right"] + c["manifest_right"] + c["blob_right"]
    failed = c["skopeo_failed"] + c["manifest_failed"] + c["blob_failed"]
    p("| client transfers | right | of which after a retry | failed |")
    p("|---|---:|---:|---:|")
    for kind, label in (("skopeo", "`skopeo copy` of an image"), ("manifest", "GET manifest by tag"),
                        ("blob", "GET blob")):
        p("| %s | %d | %d | %d |" % (label, c[kind + "_right"], c[kind + "_right_after_retry"],
                                     c[kind + "_failed"]))
    share = 100.0 * right / (right + failed) if right + failed else 0.0
    p("| **all** (%d tries) | **%d (%.1f %%)** | %d | **%d** |" % (
        c["tries"], right, share, sum(c[k + "_right_after_retry"] for k in ("skopeo", "manifest", "blob")),
        failed))
    p("")
    p("| check | result |")
    p("|---|---|")
    p("| **transfers completed with wrong bytes** (must be 0) | **%d** |" % c["wrong"])
    p("| right within %d tries (target ≥ 99 %%) | %.1f %% (%s) |" % (
        cfg.attempts, share, "met" if share >= 99.0 else "**not met**"))
    for ev in events:
        p("| kill -9 of the mirror | at %.0f s (after %d image transfers), serving again %.2f s later |"
          % (ev["at_s"], ev["done"], ev["down_s"]))
    p("| cache files after the run, hashed | %d, %d with wrong bytes |" % cache)
    p("| panics in the mirror's log | %d |" % cfg.panics)
    p("| last pass without faults: every blob GET once | %d / %d right |" % final)
    for name in METRICS:
        p("| mirror `%s` (both lives) | %s |" % (name, met(name)))
    p("")
    if tally.failures:
        p("Failed tries by kind: " + "; ".join(
            "%s: %d" % (k, n) for k, n in tally.failures.most_common(8)) + ".")
        p("")
    if tally.wrong:
        p("Wrong bytes: " + "; ".join(tally.wrong[:20]))
        p("")
    return "\n".join(out)


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 images, 6 clients")
    ap.add_argument("--binary", default=os.path.join(REPO_ROOT, "target", "release", "pullthrough"))
    ap.add_argument("--build", action="store_true", help="run `cargo build --release` first")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4, help="layers per image")
    ap.add_argument("--max-layer", default="6", help="largest layer, MiB (sizes are random)")
    ap.add_argument("--clients", type=int, default=8, help="parallel clients (half skopeo)")
    ap.add_argument("--attempts", type=int, default=5, help="tries per client transfer")
    ap.add_argument("--fault-share", type=float, default=0.4,
                    help="share of upstream responses (with a body) that get a fault")
    ap.add_argument("--kill-at", type=float, default=0.4,
                    help="kill -9 the mirror when this share of image transfers is done (0: never)")
    ap.add_argument("--read-timeout", type=int, default=10,
                    help="the mirror's upstream read_timeout, s (a stall lasts this long)")
    ap.add_argument("--stall-max", type=float, default=60.0, help="longest black-hole, s")
    ap.add_argument("--try-timeout", type=float, default=90.0, help="one client try, s")
    ap.add_argument("--max-time", type=float, default=900.0, help="whole run, s")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--direct", action="store_true",
                    help="check the checker: clients GET through the proxy with no mirror "
                         "(flips must then show up as wrong bytes; exits 1)")
    ap.add_argument("--workdir", help="keep blobs, configs, caches and logs here")
    ap.add_argument("--output", help="also write the markdown report to this file")
    cfg = ap.parse_args()
    if cfg.quick:
        cfg.images, cfg.clients, cfg.layers = 4, 6, 3
    if cfg.build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO_ROOT, check=True)
    binary = os.path.abspath(cfg.binary)
    if not os.access(binary, os.X_OK):
        ap.error("%s not found: run `cargo build --release` first (or pass --build)" % binary)
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            ap.error("%s is not installed (apt-get install docker-registry skopeo)" % tool)

    def on_signal(signum, frame):
        log("signal %d: stopping children" % signum)
        PROCS.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    cfg.load_start = loadavg()
    cfg.busy_start = busy_others()
    work = os.path.abspath(cfg.workdir) if cfg.workdir else tempfile.mkdtemp(prefix="pullthrough-faults-")
    os.makedirs(work, exist_ok=True)
    log("work directory %s" % work)
    proxy = None
    wrong = 0
    try:
        rng = random.Random(cfg.seed)
        max_layer = int(float(cfg.max_layer) * MiB)
        images = []
        for i in range(cfg.images):
            sizes = [rng.randrange(16 * KiB, max_layer) for _ in range(cfg.layers)]
            images.append(Image(work, "faults%02d" % i, sizes, rng))
        registry = Registry(work)
        for im in images:
            registry.seed(im)
        log("seeded %d images" % len(images))
        proxy = FaultProxy(registry.port, cfg.fault_share, cfg.seed, cfg.stall_max)
        proxy.start()
        mirror = Mirror(work, binary, proxy.port, cfg.read_timeout)
        if cfg.direct:
            # No mirror: the clients see the proxy's faults themselves.
            mirror.port, cfg.kill_at = proxy.port, 0
        else:
            mirror.start()

        tally = Tally()
        events = []
        cfg.t0 = time.monotonic()
        cfg.deadline = cfg.t0 + cfg.max_time
        stop = threading.Event()
        planned = cfg.clients * len(images)
        threads = []
        for i in range(cfg.clients):
            scratch = os.path.join(work, "client-%d" % i)
            os.makedirs(scratch)
            threads.append(threading.Thread(target=client, args=(cfg, i, tally, mirror, images, scratch),
                                            daemon=True, name="client-%d" % i))
        killer = threading.Thread(target=chaos, args=(cfg, tally, mirror, planned, events, stop),
                                  daemon=True)
        killer.start()
        for t in threads:
            t.start()
        last = time.monotonic()
        for t in threads:
            while t.is_alive() and time.monotonic() < cfg.deadline + 120:
                t.join(1)
                if time.monotonic() - last > 15:
                    last = time.monotonic()
                    log("progress: %d/%d image transfers, %d faults, %d wrong" % (
                        tally.done, planned, sum(proxy.faults.values()), tally.c["wrong"]))
        stop.set()
        killer.join(90)
        elapsed = time.monotonic() - cfg.t0

        # A last pass with no faults: everything the mirror serves now must
        # be right (the cache survived the faults and the kill).
        proxy.set_share(0.0)
        final_right = final_n = 0
        for im in images:
            for hexd, size in im.blobs.items():
                final_n += 1
                outcome = get_once(mirror.port, "/v2/%s/blobs/sha256:%s" % (im.name, hexd), hexd,
                                   size, cfg.try_timeout)
                final_right += outcome == "right"
                if outcome == "wrong":
                    tally.wrong_bytes("last pass blob %s" % hexd[:12])
        metrics = [mirror.metrics_before, mirror.metrics()] if not cfg.direct else []
        mirror.stop()
        registry.stop()
        cache = verify_cache(mirror.cache_dir)
        panics = 0
        if os.path.exists(os.path.join(mirror.dir, "log.txt")):
            with open(os.path.join(mirror.dir, "log.txt"), errors="replace") as fh:
                panics = sum("panicked" in line for line in fh)
        cfg.panics = panics
        text = report(cfg, images, proxy, tally, events, mirror, metrics, cache,
                      (final_right, final_n), elapsed, binary)
        print(text)
        if cfg.output:
            with open(cfg.output, "w") as fh:
                fh.write(text + "\n")
        wrong = tally.c["wrong"] + cache[1]
    finally:
        if proxy is not None:
            proxy.stop()
        PROCS.stop_all()
        if cfg.workdir:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if wrong:
        log("FAIL: %d transfers or cache files with wrong bytes" % wrong)
        sys.exit(1)


if __name__ == "__main__":
    main()
