#!/usr/bin/env python3
"""Attack suite for modserve (issue 14): can one caller stall every other caller or pin memory?

Each attack runs against a real, running server while a well-behaved client (its own process)
sends single-review unary Classify calls (task abuse, realistic text, 1 s deadline, open loop at
--rate calls/s) and records its own latency. Per attack: the normal client's p50/p99 during the
attack against a baseline measured just before it (no attack), its failed and lost calls, the
server's peak RSS (/proc/PID/status VmRSS) against the baseline's, and whether /metrics and
/health/ready on the metrics port answered (one probe of each per second, 2 s to answer). After
each attack every socket is closed and the suite waits for the server to recover (3 calls in a row
fast and /metrics answering) and reports how long that took.

Targets (exit code 1 if any attack breaks one): the normal client's p99 within 2x of its baseline
(plus --p99-floor-ms of slack for timer noise on tiny baselines), peak RSS within 100 MiB of the
baseline's, no failed or lost normal call, every probe answered. Attack-specific checks (handshake
closes, double-counted verdicts, status codes, echoed message length, SIGTERM time) count too,
unless --targets-only. Each row also gives the CPU seconds the server and this process (the
attack's callers) used during the attack.

Row k is a control, judged the same way but never counted in the exit code: local processes that
only spin (about one core each, --control-spinners) and never call the server. The attack's
callers run on the same machine as the server and the normal client; k shows what the normal
client's p99 does when the machine is busy and the server has nothing extra to do.

Usage:
  benches/attack.py --grpc 127.0.0.1:50051 --metrics 127.0.0.1:9464 --pid PID [--short]
                    [--only a,tokenizer,...] [--json OUT] [--sigterm]

Dependencies (benches/attack-requirements.txt) are installed on first use into
.tools/attack-venv, and the script re-runs itself there; gRPC stubs are generated from proto/ at
run time into a temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".tools" / "attack-venv"
REQUIREMENTS = HERE / "attack-requirements.txt"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Bootstrap: dependencies and stubs
# ---------------------------------------------------------------------------------------------


def _deps_importable() -> bool:
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def _bootstrap() -> None:
    """Re-runs the script under .tools/attack-venv, installing the pinned dependencies first."""
    if _deps_importable():
        return
    stage = os.environ.get("MODSERVE_ATTACK_BOOTSTRAPPED", "0")
    if stage == "2":
        sys.exit("attack.py: dependencies still missing after installing them into " + str(VENV))
    python = VENV / "bin" / "python"
    if stage == "0" and python.exists():  # try the venv as it is first: no pip run when it is complete
        os.environ["MODSERVE_ATTACK_BOOTSTRAPPED"] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    if not python.exists():
        print(f"attack.py: creating {VENV} ...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    print(f"attack.py: installing {REQUIREMENTS.name} into {VENV} ...", file=sys.stderr)
    subprocess.check_call(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    )
    os.environ["MODSERVE_ATTACK_BOOTSTRAPPED"] = "2"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def generate_stubs(proto_dir: Path, out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    )
    if rc != 0:
        sys.exit(f"attack.py: protoc failed ({rc}) on {proto_dir}")


def import_stubs(stub_dir: str):
    if stub_dir not in sys.path:
        sys.path.insert(0, stub_dir)
    from modserve.v1 import moderation_pb2 as pb
    from modserve.v1 import moderation_pb2_grpc as pbg

    return pb, pbg


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

REVIEWS = [
    "Terrible build quality. The hinge snapped on day three and the replacement did the same.",
    "Great blender, arrived fast, works as described. Smoothies are silky and it is not too loud.",
    "The sizing chart is completely wrong, I ordered a large and got something that fits a child.",
    "Battery lasts about two days with normal use. Screen is bright enough outdoors. Happy so far.",
    "Customer service never answered my emails, and the refund took six weeks to arrive.",
    "Lovely soft fabric, the colour is exactly like the photos. I bought a second one for my sister.",
    "Assembly instructions were confusing and two screws were missing, but the desk is sturdy now.",
    "Does what it says. Nothing special, but for the price I cannot complain.",
    "The coffee tastes burnt no matter which setting I use. Returning it.",
    "Kids love it. Survived being dropped down the stairs twice without a scratch.",
    "Stopped charging after a month. The seller replaced it quickly, which I appreciate.",
    "Smells strongly of plastic for the first week; after airing it out it is fine.",
]


def split_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))  # nearest rank
    return v[k]


def long_text(n: int, seed: int = 0) -> str:
    """Ordinary review words, exactly n bytes (ASCII)."""
    parts, size, i = [], 0, seed
    while size < n:
        s = REVIEWS[i % len(REVIEWS)] + " "
        parts.append(s)
        size += len(s)
        i += 1
    return "".join(parts)[:n].rstrip().ljust(n, ".")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def grpc_frame(message: bytes, declared: int | None = None) -> bytes:
    length = len(message) if declared is None else declared
    return b"\x00" + length.to_bytes(4, "big") + message


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def runq_wait_s(pid: int) -> float | None:
    """Seconds the threads of process `pid` have spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, second field; threads that have exited are not counted)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    except (FileNotFoundError, ProcessLookupError):
        return None
    return total / 1e9


def own_cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int | None, bytes, float]:
    """A whole GET within `timeout`: (status or None, body, seconds)."""
    status, data, took, _ = http_get_why(host, port, path, timeout)
    return status, data, took


def http_get_why(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int | None, bytes, float, str]:
    """`http_get`, plus why it got no status: "timeout", "closed before an answer", an errno name."""
    t0 = time.monotonic()
    end = t0 + timeout
    status, data, why = None, b"", ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            buf = bytearray()
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            head, _, data = bytes(buf).partition(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
                status = int(parts[1])
            else:
                why = f"closed before an answer ({len(buf)} bytes)"
    except TimeoutError:
        status, why = None, "timeout"
    except OSError as e:
        status, why = None, errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    except ValueError:
        status, why = None, "unparsable status line"
    return status, data, time.monotonic() - t0, why


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            if "{" in line:
                name, rest = line.split("{", 1)
                labels_s, value = rest.rsplit("}", 1)
                labels = {}
                for part in _split_labels(labels_s):
                    k, _, v = part.partition("=")
                    labels[k.strip()] = v.strip().strip('"')
            else:
                name, value = line.split(None, 1)
                labels = {}
            out.append((name.strip(), labels, float(value.split()[0])))
        except (ValueError, IndexError):
            continue
    return out


def _split_labels(s: str) -> list[str]:
    parts, cur, quoted, esc = [], [], False, False
    for ch in s:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def metric_sum(samples, name: str, **labels) -> float:
    total = 0.0
    for n, ls, v in samples:
        if n == name and all(ls.get(k) == val for k, val in labels.items()):
            total += v
    return total


# ---------------------------------------------------------------------------------------------
# The well-behaved client (own process, so the attacks' Python work cannot delay it)
# ---------------------------------------------------------------------------------------------


def _normal_client_main(conn, stub_dir: str, target: str, rate: float, deadline: float, token: str | None):
    import grpc

    pb, pbg = import_stubs(stub_dir)
    channel = grpc.insecure_channel(target)
    stub = pbg.ModerationStub(channel)
    metadata = [("authorization", f"Bearer {token}")] if token else None

    def request(n: int):
        return pb.ClassifyRequest(
            reviews=[pb.Review(id=f"normal-{os.getpid()}-{n}", text=REVIEWS[n % len(REVIEWS)])], tasks=["abuse"]
        )

    for _ in range(3):  # warm the connection
        try:
            stub.Classify(request(0), timeout=5, metadata=metadata)
            break
        except grpc.RpcError:
            time.sleep(0.5)
    conn.send(("ready",))
    counter = 0
    while True:
        cmd = conn.recv()
        if cmd[0] == "quit":
            break
        # ("start",): send until ("stop",), then report.
        stop = threading.Event()
        lock = threading.Lock()
        results: list[tuple[float, float, str]] = []
        sent = [0]
        t_start = time.monotonic()

        def record(fut, t0):
            code = fut.code()
            with lock:
                results.append((t0 - t_start, time.monotonic() - t0, code.name if code else "UNKNOWN"))

        def sender():
            nonlocal counter
            n = 0
            while not stop.is_set():
                due = t_start + n / rate
                wait = due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
                counter += 1
                t0 = time.monotonic()
                try:
                    fut = stub.Classify.future(request(counter), timeout=deadline, metadata=metadata)
                    fut.add_done_callback(lambda f, t0=t0: record(f, t0))
                except Exception:  # noqa: BLE001 - the channel itself failed
                    with lock:
                        results.append((t0 - t_start, 0.0, "CLIENT_ERROR"))
                sent[0] += 1
                n += 1

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        conn.recv()  # ("stop",)
        stop.set()
        th.join()
        end = time.monotonic() + deadline + 2
        while time.monotonic() < end:
            with lock:
                if len(results) >= sent[0]:
                    break
            time.sleep(0.02)
        with lock:
            conn.send(("results", sent[0], list(results)))
    channel.close()


class NormalClient:
    def __init__(self, ctx):
        import multiprocessing as mp

        spawn = mp.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.proc = spawn.Process(
            target=_normal_client_main,
            args=(child, ctx.stub_dir, ctx.grpc_target, ctx.args.rate, 1.0, ctx.args.token),
            daemon=True,
        )
        self.proc.start()
        if not self.conn.poll(30):
            raise SystemExit("attack.py: the normal client did not start")
        self.conn.recv()

    def start(self):
        self.conn.send(("start",))

    def stop(self) -> dict:
        self.conn.send(("stop",))
        if not self.conn.poll(15):
            return {"sent": 0, "lat": [], "codes": {}, "lost": 0, "failed": 0}
        _, sent, results = self.conn.recv()
        lat = [r[1] for r in results]
        codes = collections.Counter(r[2] for r in results)
        failed = sum(v for k, v in codes.items() if k != "OK")
        return {
            "sent": sent,
            "lat": lat,
            "codes": dict(codes),
            "failed": failed,
            "lost": sent - len(results),
            "p50_ms": _ms(percentile(lat, 0.5)),
            "p99_ms": _ms(percentile(lat, 0.99)),
        }

    def close(self):
        try:
            self.conn.send(("quit",))
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 2)


# ---------------------------------------------------------------------------------------------
# Monitor: RSS, CPU and HTTP probes while a window runs
# ---------------------------------------------------------------------------------------------


class Monitor:
    def __init__(self, ctx, client_pid: int | None = None):
        self.ctx = ctx
        self.client_pid = client_pid
        self.stop_ev = threading.Event()
        self.rss: list[float] = []
        self.probes: dict[str, list[int]] = {"/metrics": [0, 0], "/health/ready": [0, 0]}
        self.probe_lat: list[float] = []
        self.probe_failures: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def __enter__(self):
        self.cpu0 = cpu_seconds(self.ctx.pid)
        self.own0 = own_cpu_seconds()
        self.runq0 = (runq_wait_s(self.ctx.pid), self.client_pid and runq_wait_s(self.client_pid))
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._rss, daemon=True)]
        for path in self.probes:
            self.threads.append(threading.Thread(target=self._probe, args=(path,), daemon=True))
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(5)
        cpu1 = cpu_seconds(self.ctx.pid)
        self.cpu = None if self.cpu0 is None or cpu1 is None else round(cpu1 - self.cpu0, 2)
        self.own_cpu = round(own_cpu_seconds() - self.own0, 2)
        self.seconds = time.monotonic() - self.t0
        runq1 = (runq_wait_s(self.ctx.pid), self.client_pid and runq_wait_s(self.client_pid))
        self.runq = [None if a is None or b is None else b - a for a, b in zip(self.runq0, runq1)]

    def _rss(self):
        while True:
            r = rss_mib(self.ctx.pid)
            if r is not None:
                self.rss.append(r)
            if self.stop_ev.wait(0.2):
                return

    def _probe(self, path):
        host, port = self.ctx.metrics
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            status, _, took, why = http_get_why(host, port, path, timeout=2.0)
            with self.lock:
                self.probes[path][1] += 1
                if status == 200:
                    self.probes[path][0] += 1
                    self.probe_lat.append(took)
                else:
                    reason = f"{path}: {why or f'status {status}'} after {took * 1000:.0f} ms"
                    self.probe_failures[reason] = self.probe_failures.get(reason, 0) + 1
            self.stop_ev.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def summary(self) -> dict:
        return {
            "rss_peak_mib": round(max(self.rss), 1) if self.rss else None,
            "rss_start_mib": round(self.rss[0], 1) if self.rss else None,
            "probes": {k: f"{v[0]}/{v[1]}" for k, v in self.probes.items()},
            "probes_ok": all(v[0] == v[1] for v in self.probes.values()),
            "probe_failures": dict(self.probe_failures),
            "probes_answered": sum(v[0] for v in self.probes.values()),
            "probes_sent": sum(v[1] for v in self.probes.values()),
            "cpu_s": self.cpu,
            # This process: the attack's callers and the probes (the normal client is its own process).
            "attacker_cpu_s": self.own_cpu,
            # Time runnable but waiting for a CPU, per second of the window: the server's threads
            # and the normal client's (two cores shared by the server, the attack and the client;
            # the client's own wait is part of the latency it measures).
            "server_runq_s_per_s": None if self.runq[0] is None else round(self.runq[0] / self.seconds, 3),
            "client_runq_s_per_s": None if self.runq[1] is None else round(self.runq[1] / self.seconds, 3),
        }


# ---------------------------------------------------------------------------------------------
# Raw HTTP/2 (for what grpcio will not send: partial bodies, trailers it would refuse)
# ---------------------------------------------------------------------------------------------


class RawH2:
    def __init__(self, host: str, port: int, timeout: float = 5.0, max_header_list: int | None = None):
        import h2.config
        import h2.connection
        import h2.settings

        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if max_header_list:
            self.conn.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list})
            self.conn.decoder.max_header_list_size = max_header_list
            self.conn.decoder.max_allowed_table_size = 65536
        self.out = bytearray()
        self.closed = False
        self.terminated = None  # (error_code, last_stream_id)
        self.streams: dict[int, dict] = {}
        self.resets = 0
        self.remote_settings = False
        self.flush(time.monotonic() + timeout)
        end = time.monotonic() + timeout
        while not self.remote_settings and not self.closed and time.monotonic() < end:
            self.pump(0.05)

    def headers(self, path: str, token: str | None, extra=()) -> list[tuple[str, str]]:
        h = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"{self.host}:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            h.append(("authorization", f"Bearer {token}"))
        h.extend(extra)
        return h

    def flush(self, until: float | None = None) -> bool:
        """Sends what h2 has queued; with `until`, waits for the socket up to then. True if empty."""
        self.out += self.conn.data_to_send()
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
                del self.out[:n]
            except BlockingIOError:
                if until is None or time.monotonic() >= until:
                    return False
                select.select([], [self.sock], [], min(0.05, max(0.0, until - time.monotonic())))
            except OSError:
                self.closed = True
        return not self.out

    def pump(self, timeout: float) -> None:
        """Reads what the server sent (waiting up to `timeout`) and handles the events."""
        import h2.events

        if self.closed:
            return
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                events = self.conn.receive_data(data)
            except Exception:  # noqa: BLE001 - a protocol error on our side ends the connection
                self.closed = True
                break
            for ev in events:
                sid = getattr(ev, "stream_id", None)
                st = self.streams.setdefault(sid, {"headers": [], "data": 0, "body": bytearray(), "ended": False, "reset": None}) if sid else None
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    self.remote_settings = True
                elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    st["headers"].extend(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    st["data"] += len(ev.data)
                    if len(st["body"]) < (1 << 20):
                        st["body"] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    st["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    st["reset"] = ev.error_code
                    st["ended"] = True
                    self.resets += 1
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.terminated = (int(ev.error_code), ev.last_stream_id)
            if len(data) < (1 << 20):
                break
        self.flush()

    def request(self, path: str, body: bytes, token: str | None, timeout: float) -> dict:
        """One call with a whole body; returns the response headers/trailers."""
        end = time.monotonic() + timeout
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, token))
        self.streams[sid] = {"headers": [], "data": 0, "body": bytearray(), "ended": False, "reset": None}
        view, off = memoryview(body), 0
        while off < len(body) and time.monotonic() < end and not self.closed:
            st = self.streams[sid]
            if st["ended"]:
                break
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window > 0:
                n = min(window, len(body) - off)
                self.conn.send_data(sid, bytes(view[off : off + n]))
                off += n
                self.flush(end)
            else:
                self.pump(0.05)
        if off >= len(body) and not self.streams[sid]["ended"]:
            self.conn.end_stream(sid)
            self.flush(end)
        while not self.streams[sid]["ended"] and not self.closed and time.monotonic() < end:
            self.pump(0.05)
        return self.streams[sid]

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True


# ---------------------------------------------------------------------------------------------
# Context shared by the attacks
# ---------------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, args, stub_dir: str):
        import grpc

        self.args = args
        self.grpc_mod = grpc
        self.stub_dir = stub_dir
        self.pb, self.pbg = import_stubs(stub_dir)
        self.grpc_target = args.grpc
        self.grpc_addr = split_hostport(args.grpc)
        self.metrics = split_hostport(args.metrics)
        self.pid = args.pid
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self.metadata = [("authorization", f"Bearer {args.token}")] if args.token else None

    def channel(self, **options):
        opts = [(f"grpc.{k}", v) for k, v in options.items()]
        # A fresh subchannel per channel, so concurrent attackers are really separate connections.
        opts.append(("grpc.use_local_subchannel_pool", 1))
        return self.grpc_mod.insecure_channel(self.grpc_target, options=opts)

    def scrape(self):
        status, body, _ = http_get(*self.metrics, "/metrics", timeout=5.0)
        return parse_metrics(body.decode("utf-8", "replace")) if status == 200 else None

    def code_of(self, err) -> str:
        try:
            return err.code().name
        except Exception:  # noqa: BLE001
            return type(err).__name__


def run_threads(n: int, fn, *args) -> list:
    results: list = [None] * n
    threads = []
    for i in range(n):

        def body(i=i):
            try:
                results[i] = fn(i, *args)
            except Exception as e:  # noqa: BLE001 - an attacker's crash is reported, not fatal
                results[i] = e

        t = threading.Thread(target=body, daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results


def merge_counters(results) -> collections.Counter:
    c: collections.Counter = collections.Counter()
    for r in results:
        if isinstance(r, collections.Counter):
            c.update(r)
        elif isinstance(r, Exception):
            c[f"attacker crashed: {type(r).__name__}: {r}"] += 1
    return c


def fmt_codes(c) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"


# ---------------------------------------------------------------------------------------------
# The attacks. Each gets (ctx, duration) and returns {"detail": str, "check": bool|None, ...};
# each returns by about `duration` (plus at most one in-flight call's deadline).
# ---------------------------------------------------------------------------------------------


def attack_tokenizer(ctx: Ctx, duration: float) -> dict:
    """a. Crafted text for the tokenizer's regex normalisers, at max_text_bytes, 4 callers, 2 s deadline."""
    n = ctx.args.max_text_bytes
    texts = ["a" * (n - 1) + "@", ("a-" * ((n - 2) // 2) + "a.").rjust(n, "a")]
    end = time.monotonic() + duration
    pb = ctx.pb

    def caller(i):
        ch = ctx.channel()
        stub = ctx.pbg.ModerationStub(ch)
        codes: collections.Counter = collections.Counter()
        k = 0
        while time.monotonic() < end:
            k += 1
            req = pb.ClassifyRequest(reviews=[pb.Review(id=f"tok-{ctx.run_id}-{i}-{k}", text=texts[(i + k) % 2])])
            try:
                stub.Classify(req, timeout=2.0, metadata=ctx.metadata)
                codes["OK"] += 1
            except ctx.grpc_mod.RpcError as e:
                codes[ctx.code_of(e)] += 1
        ch.close()
        return codes

    codes = merge_counters(run_threads(4, caller))
    return {"detail": f"4 callers x {n} B crafted reviews, 2 s deadline: {fmt_codes(codes)}", "check": None,
            "attacker_codes": dict(codes)}


def attack_slow_upload(ctx: Ctx, duration: float) -> dict:
    """b. 256 streams on one connection, each declaring ~4 MB and sending all but the last byte."""
    streams_wanted, declared = 256, min(4_000_000, ctx.args.max_message_bytes - 16)
    end = time.monotonic() + duration
    send_until = time.monotonic() + duration * 0.8
    h = RawH2(*ctx.grpc_addr, timeout=5.0)
    opened, sent_total = [], 0
    remaining: dict[int, int] = {}
    zeros = bytes(1 << 16)
    try:
        limit = h.conn.remote_settings.max_concurrent_streams or streams_wanted
        for _ in range(min(streams_wanted, limit)):
            sid = h.conn.get_next_available_stream_id()
            h.conn.send_headers(sid, h.headers("/modserve.v1.Moderation/Classify", ctx.args.token))
            h.conn.send_data(sid, b"\x00" + declared.to_bytes(4, "big"))
            h.streams[sid] = {"headers": [], "data": 0, "body": bytearray(), "ended": False, "reset": None}
            opened.append(sid)
            remaining[sid] = declared - 1
        h.flush(time.monotonic() + 5)
        # Pump data round-robin, as fast as flow control lets us, until every stream is one byte short.
        while remaining and time.monotonic() < send_until and not h.closed:
            progressed = False
            for sid in list(remaining):
                st = h.streams[sid]
                if st["ended"]:
                    remaining.pop(sid)
                    continue
                try:
                    window = min(h.conn.local_flow_control_window(sid), h.conn.max_outbound_frame_size)
                except Exception:  # noqa: BLE001 - stream closed under us
                    remaining.pop(sid)
                    continue
                if window <= 0:
                    continue
                n = min(window, remaining[sid], len(zeros))
                try:
                    h.conn.send_data(sid, zeros[:n])
                except Exception:  # noqa: BLE001 - the server reset it meanwhile
                    remaining.pop(sid)
                    continue
                remaining[sid] -= n
                sent_total += n
                progressed = True
                if remaining[sid] == 0:
                    remaining.pop(sid)
                h.flush(min(send_until, time.monotonic() + 0.5))
            h.pump(0 if progressed else 0.05)
        full = sum(1 for s in opened if s not in remaining and not h.streams[s]["ended"])
        # Hold: answer pings, count resets, never send the last byte.
        while time.monotonic() < end and not h.closed:
            h.pump(0.2)
    finally:
        resets = h.resets
        terminated = h.terminated
        server_closed = h.closed
        h.close()
    detail = (
        f"{len(opened)} streams declaring {declared} B; {sent_total / MIB:.0f} MiB sent, {full} streams one byte short; "
        f"server reset {resets} streams" + (f", GOAWAY {terminated}" if terminated else "")
        + (", closed the connection" if server_closed and not terminated else "")
    )
    return {"detail": detail, "check": None, "sent_mib": round(sent_total / MIB, 1), "streams": len(opened),
            "streams_full": full, "resets": resets}


def attack_metrics_slowloris(ctx: Ctx, duration: float) -> dict:
    """c. 64 connections to the metrics port, each sending one byte every 4 s (reopened when closed),
    while a fast prober asks /health/ready every 50 ms: every reconnect makes the server close a
    connection, and the fast probes show whether it ever picks one that is being answered."""
    host, port = ctx.metrics
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 8000
    n_conns, interval = 64, 4.0
    end = time.monotonic() + duration
    conns: list[dict] = []
    opened = reopened = closed_by_server = 0
    fast = {"sent": 0, "answered": 0, "why": collections.Counter()}

    def fast_probe():
        while time.monotonic() < end:
            status, _, _, why = http_get_why(host, port, "/health/ready", timeout=2.0)
            fast["sent"] += 1
            if status == 200:
                fast["answered"] += 1
            else:
                fast["why"][why or f"status {status}"] += 1
            time.sleep(0.05)

    prober = threading.Thread(target=fast_probe, daemon=True)
    prober.start()

    def open_one():
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((host, port))
        except OSError:
            pass
        return {"sock": s, "pos": 0, "next": time.monotonic()}

    try:
        for _ in range(n_conns):
            conns.append(open_one())
            opened += 1
        while time.monotonic() < end:
            now = time.monotonic()
            for i, c in enumerate(conns):
                s = c["sock"]
                dead = False
                # Anything readable means the server answered or closed: either way the slot is gone.
                try:
                    r, _, _ = select.select([s], [], [], 0)
                    if r:
                        s.recv(4096)  # an answer (431/408) or EOF: either way the slot is gone
                        dead = True
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    dead = True
                if not dead and now >= c["next"]:
                    try:
                        s.send(head[c["pos"] : c["pos"] + 1])
                        c["pos"] = (c["pos"] + 1) % len(head)
                        c["next"] = now + interval
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as e:
                        if e.errno not in (errno.ENOTCONN, errno.EINPROGRESS):
                            dead = True
                if dead:
                    closed_by_server += 1
                    s.close()
                    conns[i] = open_one()
                    reopened += 1
            time.sleep(0.05)
    finally:
        for c in conns:
            c["sock"].close()
        prober.join(5)
    unanswered = f" ({fmt_codes(fast['why'])})" if fast["why"] else ""
    return {"detail": f"{n_conns} connections, 1 byte per {interval:.0f} s; server closed {closed_by_server} (reopened); "
                      f"fast probes answered {fast['answered']}/{fast['sent']}{unanswered}",
            "check": fast["sent"] > 0 and fast["answered"] == fast["sent"], "closed_by_server": closed_by_server}


def _open_silent_conns(ctx: Ctx, n: int) -> list[dict]:
    host, port = ctx.grpc_addr
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    conns = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        kind = "silent" if i % 2 == 0 else "half-preface"
        if kind == "half-preface":
            s.send(preface[: len(preface) // 2])
        conns.append({"sock": s, "kind": kind, "opened": time.monotonic(), "closed_at": None})
    return conns


def _poll_closed(conns: list[dict]) -> None:
    """Marks connections the server has closed (EOF or reset); discards what it sent."""
    open_socks = {c["sock"]: c for c in conns if c["closed_at"] is None}
    if not open_socks:
        return
    r, _, _ = select.select(list(open_socks), [], [], 0)
    for s in r:
        c = open_socks[s]
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    c["closed_at"] = time.monotonic()
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            c["closed_at"] = time.monotonic()


def attack_silent_conns(ctx: Ctx, duration: float) -> dict:
    """d. 200 connections to the gRPC port sending nothing, or half the HTTP/2 preface."""
    hold = max(duration, ctx.args.handshake_timeout + 3.0)
    conns = _open_silent_conns(ctx, 200)
    end = time.monotonic() + hold
    try:
        while time.monotonic() < end:
            _poll_closed(conns)
            time.sleep(0.1)
        _poll_closed(conns)
    finally:
        for c in conns:
            c["sock"].close()
    still = [c for c in conns if c["closed_at"] is None]
    took = sorted(c["closed_at"] - c["opened"] for c in conns if c["closed_at"] is not None)
    by_kind = collections.Counter(c["kind"] for c in still)
    detail = (
        f"200 (100 silent, 100 half-preface) held {hold:.0f} s: {len(still)} still open"
        + (f" ({by_kind['silent']} silent, {by_kind['half-preface']} half)" if still else "")
        + (f"; closed after {percentile(took, 0.5):.1f} s median, {took[-1]:.1f} s max" if took else "")
    )
    check = len(still) == 0 if hold >= ctx.args.handshake_timeout + 1 else None
    return {"detail": detail, "check": check, "still_open": len(still), "hold_s": hold,
            "close_s_median": percentile(took, 0.5), "close_s_max": took[-1] if took else None}


def attack_admin_open(ctx: Ctx, duration: float) -> dict:
    """e. GetConfig / ListModels / Reload on modserve.v1.Admin without a token, in a loop."""
    pb = ctx.pb
    end = time.monotonic() + duration
    cpu0 = cpu_seconds(ctx.pid)

    def caller(i):
        ch = ctx.channel()
        stub = ctx.pbg.AdminStub(ch)
        codes: collections.Counter = collections.Counter()
        applied = 0
        calls = [("GetConfig", stub.GetConfig, pb.GetConfigRequest()),
                 ("ListModels", stub.ListModels, pb.ListModelsRequest()),
                 ("Reload", stub.Reload, pb.ReloadRequest())]
        k = i
        while time.monotonic() < end:
            name, fn, req = calls[k % 3]
            k += 1
            try:
                resp = fn(req, timeout=10.0)  # deliberately no token
                codes[f"{name} OK"] += 1
                if name == "Reload" and resp.applied:
                    applied += 1
            except ctx.grpc_mod.RpcError as e:
                codes[f"{name} {ctx.code_of(e)}"] += 1
        ch.close()
        codes["_applied"] = applied
        return codes

    codes = merge_counters(run_threads(2, caller))
    cpu1 = cpu_seconds(ctx.pid)
    applied = codes.pop("_applied", 0)
    ok = sum(v for k, v in codes.items() if k.endswith(" OK"))
    cpu = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 1)
    reloads = sum(v for k, v in codes.items() if k.startswith("Reload"))
    detail = f"no token: {ok} answered OK ({fmt_codes(codes)}); {applied} of {reloads} reloads applied; server CPU {cpu} s"
    check = (ok == 0) if ctx.args.admin_guarded else None
    return {"detail": detail, "check": check, "admin_ok": ok, "reloads_applied": applied, "server_cpu_s": cpu,
            "codes": dict(codes)}


def attack_verdict_flood(ctx: Ctx, duration: float) -> dict:
    """f. Identical verdicts at once (counted twice?), then a flood of 32 KiB verdicts, many in flight."""
    pb = ctx.pb
    half = ctx.args.max_text_bytes
    before = ctx.scrape()
    # Phase 1: the same (review id, task) from several connections at once. Each round's calls are
    # framed beforehand and written to the sockets back to back, so they reach the server within
    # microseconds of each other.
    attack_end = time.monotonic() + duration
    dup_end = time.monotonic() + duration * 0.35
    copies, max_rounds = 6, 600
    outcome: list[list] = [[None] * max_rounds for _ in range(copies)]
    conns = [RawH2(*ctx.grpc_addr, timeout=5.0) for _ in range(copies)]
    title, text = long_text(half, 1), long_text(half, 2)
    # Meanwhile a paced trickle of 32 KiB verdicts keeps the server's threads busy (preemption
    # inside the check-then-insert window is what lets a duplicate through) without filling the queue.
    trickle_stop = threading.Event()
    trickle = collections.Counter()

    def trickler():
        ch = ctx.channel()
        stub = ctx.pbg.FeedbackStub(ch)
        k = 0
        while not trickle_stop.wait(0.25):
            k += 1
            verdicts = [pb.Verdict(review=pb.Review(id=f"tr-{ctx.run_id}-{k}-{j}", title=title, text=text), task="abuse",
                                   decision=pb.DECISION_REVIEW, source="trust-safety") for j in range(8)]
            try:
                stub.SubmitVerdicts(pb.SubmitVerdictsRequest(verdicts=verdicts), timeout=5.0, metadata=ctx.metadata)
                trickle["OK"] += 1
            except ctx.grpc_mod.RpcError as e:
                trickle[ctx.code_of(e)] += 1
        ch.close()

    trickle_thread = threading.Thread(target=trickler, daemon=True)
    trickle_thread.start()
    try:
        for r in range(max_rounds):
            if time.monotonic() > dup_end or any(c.closed for c in conns):
                break
            v = pb.Verdict(review=pb.Review(id=f"dup-{ctx.run_id}-{r}", text=REVIEWS[r % len(REVIEWS)]), task="fraud",
                           decision=pb.DECISION_ALLOW, source="trust-safety")
            body = grpc_frame(pb.SubmitVerdictsRequest(verdicts=[v]).SerializeToString())
            sids = []
            for c in conns:
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, c.headers("/modserve.v1.Feedback/SubmitVerdicts", ctx.args.token))
                c.conn.send_data(sid, body, end_stream=True)
                c.streams[sid] = {"headers": [], "data": 0, "body": bytearray(), "ended": False, "reset": None}
                c.out += c.conn.data_to_send()
                sids.append(sid)
            for c in conns:  # back to back
                c.flush()
            for c in conns:
                c.flush(time.monotonic() + 5)
            round_end = time.monotonic() + 5
            while time.monotonic() < round_end and not all(c.streams[sid]["ended"] or c.closed
                                                           for c, sid in zip(conns, sids)):
                for c in conns:
                    c.pump(0.002)
            for i, (c, sid) in enumerate(zip(conns, sids)):
                st = c.streams.pop(sid)
                hdrs = dict(st["headers"])
                code = hdrs.get("grpc-status")
                if code == "0" and len(st["body"]) >= 5:
                    resp = pb.SubmitVerdictsResponse.FromString(bytes(st["body"][5:]))
                    outcome[i][r] = ("OK", resp.accepted, resp.duplicates)
                else:
                    outcome[i][r] = (f"status {code}", 0, 0)
    finally:
        trickle_stop.set()
        trickle_thread.join(10)
        for c in conns:
            c.close()
    rounds = [[outcome[i][r] for i in range(copies)] for r in range(max_rounds) if outcome[0][r]]
    all_ok = [rd for rd in rounds if all(o[0] == "OK" for o in rd)]
    doubled = sum(1 for rd in all_ok if sum(o[1] for o in rd) >= 2)
    mid = ctx.scrape()
    dup_delta = None
    if before is not None and mid is not None:
        name = "modserve_verdicts_received_total"
        dup_delta = metric_sum(mid, name, task="fraud", outcome="duplicate") - metric_sum(
            before, name, task="fraud", outcome="duplicate")
    # Each all-OK round should add copies - 1 duplicates to the counter; fewer means some counted twice.
    doubled_metrics = None if dup_delta is None else int(len(all_ok) * (copies - 1) - dup_delta)

    # Phase 2: 8 callers, each sending 64 verdicts of 32 KiB (16 KiB title + 16 KiB text), unique ids.
    flood_end = max(attack_end, time.monotonic() + 1.0)

    def flooder(i):
        ch = ctx.channel(max_send_message_length=-1)
        stub = ctx.pbg.FeedbackStub(ch)
        codes: collections.Counter = collections.Counter()
        k = 0
        while time.monotonic() < flood_end:
            k += 1
            verdicts = [
                pb.Verdict(review=pb.Review(id=f"fl-{ctx.run_id}-{i}-{k}-{j}", title=title, text=text), task="abuse",
                           decision=pb.DECISION_REJECT, source="trust-safety")
                for j in range(64)
            ]
            try:
                resp = stub.SubmitVerdicts(pb.SubmitVerdictsRequest(verdicts=verdicts), timeout=10.0,
                                           metadata=ctx.metadata)
                codes["OK"] += 1
                codes["_accepted"] += resp.accepted
            except ctx.grpc_mod.RpcError as e:
                codes[ctx.code_of(e)] += 1
        ch.close()
        return codes

    codes = merge_counters(run_threads(8, flooder))
    accepted = codes.pop("_accepted", 0)
    detail = (
        f"{len(rounds)} rounds of {copies} identical verdicts at once: {doubled} rounds counted more than once "
        f"by the answers" + (f", {doubled_metrics} extra counts by /metrics" if doubled_metrics is not None else "")
        + f" (trickle beside them: {fmt_codes(trickle)})"
        + f"; flood 8 x 64 x 32 KiB: {accepted} verdicts accepted, calls {fmt_codes(codes)}"
    )
    check = doubled == 0 and (doubled_metrics or 0) <= 0
    return {"detail": detail, "check": check, "dup_rounds": len(rounds), "dup_all_ok": len(all_ok),
            "doubled": doubled, "doubled_metrics": doubled_metrics, "dup_codes": dict(collections.Counter(o[0] for rd in rounds for o in rd)), "flood_accepted": accepted,
            "flood_codes": dict(codes)}


def attack_malformed_proto(ctx: Ctx, duration: float) -> dict:
    """g. Garbage bytes inside a valid gRPC frame on Classify."""
    bodies = [
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint tag that never ends properly
        b"\x0a\xff\xff\xff\x0f" + b"x" * 16,  # a length-delimited field far longer than the message
        b"\x0a\x05\x0a\x01",  # truncated nested Review
        os.urandom(64),
    ]
    before = ctx.scrape()
    end = time.monotonic() + duration

    def caller(i):
        ch = ctx.channel()
        call = ch.unary_unary("/modserve.v1.Moderation/Classify", request_serializer=None, response_deserializer=None)
        codes: collections.Counter = collections.Counter()
        k = 0
        while time.monotonic() < end:
            body = bodies[k % 3] if k % 4 != 3 else os.urandom(64)
            k += 1
            try:
                call(body, timeout=2.0, metadata=ctx.metadata)
                codes["OK"] += 1
            except ctx.grpc_mod.RpcError as e:
                codes[ctx.code_of(e)] += 1
            time.sleep(0.01)
        ch.close()
        return codes

    codes = merge_counters(run_threads(2, caller))
    after = ctx.scrape()
    sent = sum(codes.values())
    counted = None
    if before is not None and after is not None:
        name = "modserve_requests_total"
        counted = int(sum(metric_sum(after, name, method="Classify", code=c) - metric_sum(before, name, method="Classify", code=c)
                          for c in ("INVALID_ARGUMENT", "INTERNAL", "UNKNOWN")))
    detail = f"{sent} garbage bodies: {fmt_codes(codes)}; counted in modserve_requests_total: {counted}"
    check = set(codes) == {"INVALID_ARGUMENT"} and counted is not None and counted >= sent
    return {"detail": detail, "check": check, "codes": dict(codes), "sent": sent, "counted": counted}


def attack_huge_task_name(ctx: Ctx, duration: float) -> dict:
    """h. A 1 MiB task name: how long a grpc-message comes back, and what a grpcio client sees."""
    pb = ctx.pb
    task = "t" * MIB
    req = pb.ClassifyRequest(reviews=[pb.Review(id=f"huge-{ctx.run_id}", text=REVIEWS[0])], tasks=[task])
    body = grpc_frame(req.SerializeToString())
    end = time.monotonic() + duration
    msg_lens, statuses, resets = [], collections.Counter(), 0
    grpcio_codes: collections.Counter = collections.Counter()
    ch = ctx.channel(max_send_message_length=-1)
    stub = ctx.pbg.ModerationStub(ch)
    first = True
    while first or time.monotonic() < end:
        if first:
            # Raw HTTP/2 once, to read the whole trailer (decoding 1 MiB of HPACK in Python costs
            # this machine's CPU, so the loop goes on with grpcio alone).
            h = RawH2(*ctx.grpc_addr, timeout=5.0, max_header_list=64 * MIB)
            try:
                st = h.request("/modserve.v1.Moderation/Classify", body, ctx.args.token, timeout=10.0)
            finally:
                h.close()
            hdrs = dict(st["headers"])
            if st["reset"] is not None:
                resets += 1
            statuses[hdrs.get("grpc-status", "none")] += 1
            msg_lens.append(len(hdrs.get("grpc-message", "")))
        first = False
        try:
            stub.Classify(req, timeout=5.0, metadata=ctx.metadata)
            grpcio_codes["OK"] += 1
        except ctx.grpc_mod.RpcError as e:
            grpcio_codes[ctx.code_of(e)] += 1
        time.sleep(0.2)
    ch.close()
    max_len = max(msg_lens) if msg_lens else 0
    detail = (
        f"grpc-message {max_len} B (grpc-status {fmt_codes(statuses)}"
        + (f", reset" if resets else "") + f"); a grpcio client sees {fmt_codes(grpcio_codes)}"
    )
    check = max_len <= 1024 and set(grpcio_codes) <= {"INVALID_ARGUMENT"} and resets == 0
    return {"detail": detail, "check": check, "grpc_message_bytes": max_len, "grpc_status": dict(statuses),
            "grpcio_codes": dict(grpcio_codes)}


def attack_big_requests(ctx: Ctx, duration: float) -> dict:
    """i. A few valid, maximal requests in a loop (--big-callers callers, one call in flight each):
    max_reviews_per_request reviews of 2 x max_text_bytes."""
    pb = ctx.pb
    n_reviews, half = ctx.args.max_reviews, ctx.args.max_text_bytes
    title, text = long_text(half, 3), long_text(half, 4)
    end = time.monotonic() + duration
    size = [0]

    def caller(i):
        ch = ctx.channel(max_send_message_length=-1, max_receive_message_length=-1)
        stub = ctx.pbg.ModerationStub(ch)
        codes: collections.Counter = collections.Counter()
        lat = []
        k = 0
        while time.monotonic() < end:
            k += 1
            req = pb.ClassifyRequest(reviews=[pb.Review(id=f"big-{ctx.run_id}-{i}-{k}-{j}", title=title, text=text)
                                              for j in range(n_reviews)])
            size[0] = req.ByteSize()
            t0 = time.monotonic()
            try:
                stub.Classify(req, timeout=30.0, metadata=ctx.metadata)
                codes["OK"] += 1
            except ctx.grpc_mod.RpcError as e:
                codes[ctx.code_of(e)] += 1
            lat.append(time.monotonic() - t0)
        ch.close()
        codes["_lat"] = 0
        return (codes, lat)

    results = run_threads(ctx.args.big_callers, caller)
    codes: collections.Counter = collections.Counter()
    lat: list[float] = []
    for r in results:
        if isinstance(r, tuple):
            codes.update(r[0])
            lat.extend(r[1])
        elif isinstance(r, Exception):
            codes[f"attacker crashed: {r}"] += 1
    codes.pop("_lat", None)
    detail = (f"{ctx.args.big_callers} callers x {n_reviews} reviews ({size[0] / MIB:.1f} MiB each): {fmt_codes(codes)}, "
              f"their median {(percentile(lat, 0.5) or 0):.2f} s")
    return {"detail": detail, "check": None, "request_mib": round(size[0] / MIB, 2), "codes": dict(codes),
            "their_p50_s": percentile(lat, 0.5)}


def control_busy_machine(ctx: Ctx, duration: float) -> dict:
    """k. Control, not an attack: processes that only spin on this machine for the attack window and
    never call the server. An attack client shares the machine with the server and the normal
    client; this shows what the normal client's p99 does when the machine is that busy and the
    server has nothing extra to do. Compare its row with the attacks' (their "attack client" CPU)."""
    n = ctx.args.control_spinners
    spin = f"import time\nend = time.monotonic() + {duration}\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    for proc in procs:
        proc.wait()
    return {"detail": f"{n} local process(es) spinning for {duration:.0f} s; no call to the server", "check": None,
            "control": True}


def attack_many_reviews(ctx: Ctx, duration: float) -> dict:
    """j. ~330k tiny reviews in one message just under max_message_bytes: time (and RSS) to refuse."""
    budget = ctx.args.max_message_bytes - 64
    parts, size, i = [], 0, 0
    while True:
        rid = f"{i:04x}"[-4:].encode()
        review = b"\x0a" + varint(len(rid)) + rid + b"\x12\x02ok"
        item = b"\x0a" + varint(len(review)) + review
        if size + len(item) > budget:
            break
        parts.append(item)
        size += len(item)
        i += 1
    body = b"".join(parts)
    ch = ctx.channel(max_send_message_length=-1)
    call = ch.unary_unary("/modserve.v1.Moderation/Classify", request_serializer=None, response_deserializer=None)
    end = time.monotonic() + duration
    codes: collections.Counter = collections.Counter()
    took = []
    while not took or time.monotonic() < end:
        t0 = time.monotonic()
        try:
            call(body, timeout=30.0, metadata=ctx.metadata)
            codes["OK"] += 1
        except ctx.grpc_mod.RpcError as e:
            codes[ctx.code_of(e)] += 1
        took.append(time.monotonic() - t0)
        time.sleep(0.2)
    ch.close()
    detail = (f"{i} reviews in {size / MIB:.2f} MiB, {len(took)} calls: {fmt_codes(codes)}; "
              f"refused in {percentile(took, 0.5):.2f} s median, {max(took):.2f} s max")
    check = set(codes) == {"INVALID_ARGUMENT"}
    return {"detail": detail, "check": check, "reviews": i, "codes": dict(codes), "refuse_s_median": percentile(took, 0.5),
            "refuse_s_max": max(took)}


def attack_call_flood(ctx: Ctx, duration: float) -> dict:
    """l. One client keeps 512 single-review Classify calls in flight on 8 connections, each sent as
    soon as the last is answered: the independent HTTP/2 load generator (modserve-loadgen, --loadgen),
    whose rate no Python client matches. What it gets is what the others lose."""
    loadgen = Path(ctx.args.loadgen)
    if not loadgen.is_file():
        return {"detail": f"no load generator at {loadgen} (cargo build --release --bin loadgen)", "check": False}
    if ctx.args.token:
        return {"detail": "the load generator sends no token: run without --token", "check": False}
    cmd = [str(loadgen), "--addr", f"http://{ctx.grpc_target}", "--concurrency", "512", "--connections", "8",
           "--duration", f"{duration:.0f}s", "--warmup", "0s", "--json",
           "--texts", str(ROOT / "models" / "eval" / "reviews.jsonl")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"detail": f"load generator failed ({out.returncode}): {out.stderr.strip()[-300:]}", "check": False}
    level = json.loads(lines[-1])
    errors = level.get("errors") or {}
    codes = collections.Counter({"OK": level["ok"], **errors})
    detail = (f"1 client, 8 connections x 64 calls in flight: {fmt_codes(codes)} "
              f"({level['requests_per_s']:.0f}/s, its p99 {level['p99_ms']:.1f} ms)")
    return {"detail": detail, "check": level["ok"] > 0, "codes": dict(codes),
            "flood_per_s": round(level["requests_per_s"]), "flood_p99_ms": level["p99_ms"]}


def attack_scrape_flood(ctx: Ctx, duration: float) -> dict:
    """m. 16 clients looping `GET /metrics`, each on a new connection as soon as the last answer is
    in (a misconfigured scraper, or anyone who can reach the port): a render of every metric is the
    costliest answer the server gives, and the metrics port shares the CPUs with live calls."""
    host, port = ctx.metrics
    end = time.monotonic() + duration
    codes: collections.Counter = collections.Counter()
    whole: list[int] = []
    lock = threading.Lock()

    def scrape_loop():
        while time.monotonic() < end:
            status, data, _, why = http_get_why(host, port, "/metrics", timeout=5.0)
            with lock:
                codes[status if status is not None else why] += 1
                # A whole scrape, not an empty or cut one.
                if status == 200 and b"modserve_requests_total" in data:
                    whole.append(len(data))

    threads = [threading.Thread(target=scrape_loop, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 10)
    answered = sum(codes.values())
    size = sorted(whole)[len(whole) // 2] if whole else 0
    return {"detail": f"16 scrapers: {fmt_codes(codes)}; {answered / duration:.0f} scrapes/s, median {size} B",
            "check": answered > 0 and len(whole) == answered, "scrapes_per_s": round(answered / duration)}


ATTACKS = [
    ("a", "tokenizer", attack_tokenizer),
    ("b", "slow-upload", attack_slow_upload),
    ("c", "metrics-slowloris", attack_metrics_slowloris),
    ("d", "silent-conns", attack_silent_conns),
    ("e", "admin-no-token", attack_admin_open),
    ("f", "verdict-flood", attack_verdict_flood),
    ("g", "malformed-proto", attack_malformed_proto),
    ("h", "huge-task-name", attack_huge_task_name),
    ("i", "big-requests", attack_big_requests),
    ("j", "many-reviews", attack_many_reviews),
    ("k", "busy-machine-control", control_busy_machine),
    ("l", "call-flood", attack_call_flood),
    ("m", "scrape-flood", attack_scrape_flood),
]

RUN_ORDER = "kacmdeghjilfb"

# ---------------------------------------------------------------------------------------------
# Running: baseline window, attack window, recovery
# ---------------------------------------------------------------------------------------------


def wait_recovered(ctx: Ctx, limit: float, fast_s: float) -> float | None:
    """Seconds until 3 calls in a row answer OK within `fast_s` while /metrics answers and shows no
    queued work (model queues, verdict queue); None if not within `limit`."""
    pb = ctx.pb
    ch = ctx.channel()
    stub = ctx.pbg.ModerationStub(ch)
    t0 = time.monotonic()
    streak, first_ok = 0, None
    try:
        while time.monotonic() - t0 < limit:
            if not pid_alive(ctx.pid):
                return None
            t = time.monotonic()
            ok = False
            try:
                stub.Classify(pb.ClassifyRequest(reviews=[pb.Review(id="recovery", text=REVIEWS[1])], tasks=["abuse"]),
                              timeout=1.0, metadata=ctx.metadata)
                ok = time.monotonic() - t <= fast_s
            except ctx.grpc_mod.RpcError:
                ok = False
            if ok:
                # /metrics answers, and no work the attack queued is still waiting (verdicts being
                # scored in the background would otherwise leak into the next baseline).
                status, body, _ = http_get(*ctx.metrics, "/metrics", timeout=1.0)
                ok = status == 200
                if ok:
                    samples = parse_metrics(body.decode("utf-8", "replace"))
                    ok = metric_sum(samples, "modserve_feedback_queue_verdicts") == 0 and metric_sum(
                        samples, "modserve_queue_depth") == 0
            if ok:
                if streak == 0:
                    first_ok = t
                streak += 1
                if streak >= 3:
                    return round(first_ok - t0, 2)
            else:
                streak = 0
            time.sleep(0.1)
        return None
    finally:
        ch.close()


def run_attack(ctx: Ctx, client: NormalClient, letter: str, name: str, fn, baseline_s: float, attack_s: float,
               recovery_limit: float) -> dict:
    row = {"attack": f"{letter}. {name}"}
    # Baseline: the normal client alone.
    with Monitor(ctx, client.proc.pid) as mon:
        client.start()
        time.sleep(baseline_s)
        base = client.stop()
    row["baseline"] = {**{k: v for k, v in base.items() if k != "lat"}, **mon.summary()}
    # Attack.
    t_attack = time.monotonic()
    with Monitor(ctx, client.proc.pid) as mon:
        client.start()
        try:
            res = fn(ctx, attack_s)
        except Exception as e:  # noqa: BLE001 - report the attack's own failure, carry on
            res = {"detail": f"attack crashed: {type(e).__name__}: {e}", "check": False}
        att = client.stop()
    row["attack_s"] = round(time.monotonic() - t_attack, 1)
    row["during"] = {**{k: v for k, v in att.items() if k != "lat"}, **mon.summary()}
    row.update({k: v for k, v in res.items()})
    # Recovery.
    fast = max(2 * (base.get("p99_ms") or 50) / 1000, 0.05)
    row["recovery_s"] = wait_recovered(ctx, recovery_limit, fast)
    row["server_alive"] = pid_alive(ctx.pid)
    judge(ctx, row)
    return row


def judge(ctx: Ctx, row: dict) -> None:
    b, d = row["baseline"], row["during"]
    floor = ctx.args.p99_floor_ms
    bp99, dp99 = b.get("p99_ms"), d.get("p99_ms")
    limit = None if bp99 is None else max(2 * bp99, bp99 + floor)
    t = {
        "p99": dp99 is not None and limit is not None and dp99 <= limit,
        "rss": b.get("rss_peak_mib") is not None and d.get("rss_peak_mib") is not None
        and d["rss_peak_mib"] - b["rss_peak_mib"] <= 100,
        "lost": d.get("failed", 1) == 0 and d.get("lost", 1) == 0 and d.get("sent", 0) > 0,
        "probes": bool(d.get("probes_ok")),
        "recovered": row.get("recovery_s") is not None,
    }
    row["p99_limit_ms"] = limit
    row["targets"] = t
    # On a shared or debug build (CI) latency and memory say more about the machine than the
    # server: --no-latency-targets keeps them in the table and out of the exit code.
    ignored = {"p99", "rss"} if ctx.args.no_latency_targets else set()
    broken = [k for k, v in t.items() if not v and k not in ignored]
    if row.get("check") is False and not ctx.args.targets_only:
        broken.append("check")
    row["broken"] = broken
    row["pass"] = not broken


def fmt_row_line(row: dict) -> str:
    b, d = row["baseline"], row["during"]
    return (
        f"[{('CONTROL ' if row.get('control') else '') + ('PASS' if row['pass'] else 'FAIL')}] {row['attack']}: normal p50 {b.get('p50_ms')}->{d.get('p50_ms')} ms, "
        f"p99 {b.get('p99_ms')}->{d.get('p99_ms')} ms, failed {d.get('failed')}/{d.get('sent')} lost {d.get('lost')}"
        f"{' (' + fmt_codes(collections.Counter({k: v for k, v in d.get('codes', {}).items() if k != 'OK'})) + ')' if d.get('failed') else ''}, "
        f"RSS {b.get('rss_peak_mib')}->{d.get('rss_peak_mib')} MiB, probes {d['probes']['/metrics']} metrics "
        f"{d['probes']['/health/ready']} health, recovery {row.get('recovery_s')} s, "
        f"CPU s server {b.get('cpu_s')}->{d.get('cpu_s')} attack client {d.get('attacker_cpu_s')}, "
        f"waiting for a CPU (s/s) server {b.get('server_runq_s_per_s')}->{d.get('server_runq_s_per_s')} "
        f"normal client {b.get('client_runq_s_per_s')}->{d.get('client_runq_s_per_s')} | {row.get('detail')}"
        + (f" | broken: {', '.join(row['broken'])}" if row["broken"] else "")
        + (f" | probes unanswered: {d['probe_failures']}" if d.get("probe_failures") else "")
    )


def markdown_table(rows: list[dict]) -> str:
    out = [
        "| attack | normal p50 ms (base → attack) | normal p99 ms (base → attack) | normal failed / sent (lost) "
        "| RSS MiB (base → peak) | /metrics, /health/ready answered | recovery s "
        "| CPU s during: server, attack client | what the attack saw | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, d = r.get("baseline", {}), r.get("during", {})
        rss = ""
        if b.get("rss_peak_mib") is not None and d.get("rss_peak_mib") is not None:
            rss = f"{b['rss_peak_mib']:.0f} → {d['rss_peak_mib']:.0f} (+{d['rss_peak_mib'] - b['rss_peak_mib']:.0f})"
        probes = f"{d.get('probes', {}).get('/metrics', '-')}, {d.get('probes', {}).get('/health/ready', '-')}" if d else "-"
        failed = f"{d.get('failed')} / {d.get('sent')} ({d.get('lost')})" if d else "-"
        rec = "-" if r.get("recovery_s") is None and not d else (
            f"{r['recovery_s']}" if r.get("recovery_s") is not None else "not recovered")
        result = "pass" if r.get("pass") else "FAIL: " + ", ".join(r.get("broken", []))
        if r.get("control"):
            result = "control: " + ("within" if r.get("pass") else "outside " + ", ".join(r.get("broken", [])))
        cpu = f"{d.get('cpu_s', '-')}, {d.get('attacker_cpu_s', '-')}" if d else "-"
        detail = str(r.get("detail", "")).replace("|", "/")
        out.append(
            f"| {r['attack']} | {b.get('p50_ms', '-')} → {d.get('p50_ms', '-')} | {b.get('p99_ms', '-')} → {d.get('p99_ms', '-')} "
            f"| {failed} | {rss} | {probes} | {rec} | {cpu} | {detail} | {result} |"
        )
    return "\n".join(out)


def sigterm_phase(ctx: Ctx, wait_limit: float) -> dict:
    """With 200 silent/half-preface connections open, how long SIGTERM takes to stop the server."""
    row = {"attack": "d. sigterm-with-silent-conns", "baseline": {}, "during": {}}
    conns = _open_silent_conns(ctx, 200)
    try:
        time.sleep(1.0)
        _poll_closed(conns)
        open_before = sum(1 for c in conns if c["closed_at"] is None)
        t0 = time.monotonic()
        os.kill(ctx.pid, signal.SIGTERM)
        while pid_alive(ctx.pid) and time.monotonic() - t0 < wait_limit:
            _poll_closed(conns)
            time.sleep(0.01)
        took = time.monotonic() - t0
        stopped = not pid_alive(ctx.pid)
    finally:
        for c in conns:
            c["sock"].close()
    row["detail"] = (f"SIGTERM with {open_before} of 200 such connections open: "
                     + (f"stopped in {took:.2f} s" if stopped else f"still running after {took:.0f} s"))
    row["sigterm_s"] = round(took, 3) if stopped else None
    row["check"] = stopped and took <= ctx.args.sigterm_max
    row["broken"] = [] if row["check"] or ctx.args.targets_only else ["check"]
    row["pass"] = not row["broken"]
    row["recovery_s"] = None
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc", required=True, help="the server's gRPC HOST:PORT")
    p.add_argument("--metrics", required=True, help="the server's metrics/health HTTP HOST:PORT")
    p.add_argument("--pid", required=True, type=int, help="the server's process id (RSS and CPU from /proc)")
    p.add_argument("--short", action="store_true", help="~8 s attacks, 3 s baselines (CI)")
    p.add_argument("--only", default="", help="comma-separated attacks, by letter or name (default: all)")
    p.add_argument("--json", help="also write every figure as JSON to this file")
    p.add_argument("--token", default=os.environ.get("MODSERVE_ATTACK_TOKEN"),
                   help="Moderation bearer token for the normal client and the Moderation/Feedback attacks "
                        "(env MODSERVE_ATTACK_TOKEN); Admin is always attacked without one")
    p.add_argument("--admin-guarded", action="store_true",
                   help="Admin is expected to refuse callers without a token (attack e's check)")
    p.add_argument("--sigterm", action="store_true",
                   help="at the end, SIGTERM the server with 200 silent connections open and time its exit (kills it)")
    p.add_argument("--sigterm-max", type=float, default=2.0, help="seconds SIGTERM may take (check)")
    p.add_argument("--sigterm-wait", type=float, default=45.0, help="seconds to wait for the exit at most")
    p.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds within which the server must close connections that never finish the HTTP/2 "
                        "handshake (attack d holds its connections at least this long + 3 s)")
    p.add_argument("--max-text-bytes", type=int, default=16384, help="the server's limits.max_text_bytes")
    p.add_argument("--max-message-bytes", type=int, default=4194304, help="the server's limits.max_message_bytes")
    p.add_argument("--max-reviews", type=int, default=64, help="the server's limits.max_reviews_per_request")
    p.add_argument("--loadgen", default=str(ROOT / "target" / "release" / "loadgen"),
                   help="modserve-loadgen binary for attack l (attack.sh passes the one beside the server)")
    p.add_argument("--big-callers", type=int, default=3, help="attack i's callers (one maximal call in flight each)")
    p.add_argument("--rate", type=float, default=50.0, help="the normal client's calls per second (open loop)")
    p.add_argument("--p99-floor-ms", type=float, default=5.0,
                   help="slack added to the 2x p99 target for tiny baselines: limit = max(2*base, base+floor)")
    p.add_argument("--control-spinners", type=int, default=1,
                   help="processes the control row k spins (about one core each); match an attack client's CPU")
    p.add_argument("--targets-only", action="store_true", help="exit code from the four targets only, not the checks")
    p.add_argument("--no-latency-targets", action="store_true",
                   help="leave the p99 and RSS targets out of the exit code (CI on a debug build); the checks, "
                        "lost calls, probes and recovery still count")
    p.add_argument("--proto", default=str(ROOT / "proto"), help="directory of the .proto files")
    args = p.parse_args()

    selected = []
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    # Run order: the attacks that grow memory last, smallest first, because the allocator keeps what
    # an attack made the server allocate and a later attack's growth is measured on top of it.
    order = {letter: i for i, letter in enumerate(RUN_ORDER)}
    for letter, name, fn in sorted(ATTACKS, key=lambda a: order[a[0]]):
        if not wanted or letter in wanted or name in wanted:
            selected.append((letter, name, fn))
    if wanted and not selected and not args.sigterm:
        p.error(f"--only {args.only}: no such attack; choose from " + ", ".join(f"{l} ({n})" for l, n, _ in ATTACKS))
    if not pid_alive(args.pid):
        p.error(f"--pid {args.pid}: no such running process")

    baseline_s, attack_s, recovery_limit = (3.0, 8.0, 30.0) if args.short else (10.0, 30.0, 90.0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="modserve-attack-stubs-") as stub_dir:
        generate_stubs(Path(args.proto), Path(stub_dir))
        ctx = Ctx(args, stub_dir)
        if wait_recovered(ctx, 30.0, 1.0) is None:
            print("attack.py: the server does not answer Classify and /metrics; is it ready?", file=sys.stderr)
            return 2
        client = NormalClient(ctx)
        t_all = time.monotonic()
        try:
            for letter, name, fn in selected:
                if not pid_alive(ctx.pid):
                    rows.append({"attack": f"{letter}. {name}", "detail": "server is gone", "pass": False,
                                 "broken": ["server exited"]})
                    continue
                row = run_attack(ctx, client, letter, name, fn, baseline_s, attack_s, recovery_limit)
                print(fmt_row_line(row), flush=True)
                rows.append(row)
            if args.sigterm and pid_alive(ctx.pid):
                row = sigterm_phase(ctx, args.sigterm_wait)
                print(f"[{'PASS' if row['pass'] else 'FAIL'}] {row['attack']}: {row['detail']}", flush=True)
                rows.append(row)
        finally:
            client.close()
        total = time.monotonic() - t_all
    print()
    print(markdown_table(sorted(rows, key=lambda r: r["attack"])))
    controls = [r for r in rows if r.get("control")]
    failed = [r["attack"] for r in rows if not r.get("pass") and not r.get("control")]
    print(f"\n{len(rows) - len(controls) - len(failed)} passed, {len(failed)} failed"
          f"{f', {len(controls)} control' if controls else ''} ({total:.0f} s{', short form' if args.short else ''})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "token"}, "seconds": round(total, 1),
                       "rows": rows}, f, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    _bootstrap()
    sys.exit(main())
