#!/usr/bin/env python3
"""An OTLP trace receiver for the tests: the real protocols, OTLP/gRPC (TraceService/Export,
grpcio) and OTLP/HTTP (POST /v1/traces with a protobuf body, http.server), with the messages
generated at run time from the opentelemetry-proto definitions in tests/fixtures/otlp. Writes one
JSON line per span received to --out, and once it serves "GRPC_PORT HTTP_PORT" to --port-file.
Runs until killed.

It uses the Python example's pinned dependencies (examples/python/requirements.txt: grpcio,
grpcio-tools, protobuf) in .tools/examples-venv, installing them on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".tools" / "examples-venv"
REQUIREMENTS = ROOT / "examples" / "python" / "requirements.txt"
PROTOS = ROOT / "tests" / "fixtures" / "otlp"


def _bootstrap() -> None:
    """Re-runs the script under .tools/examples-venv, installing the pinned dependencies first."""
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get("MODSERVE_OTLP_BOOTSTRAPPED") == "1":
        sys.exit(f"receiver.py: dependencies still missing in {VENV}")
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    if subprocess.call([str(python), "-c", "import grpc, grpc_tools"], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
        )
    os.environ["MODSERVE_OTLP_BOOTSTRAPPED"] = "1"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def load_stubs(out: Path):
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        sys.exit("receiver.py: protoc failed")
    sys.path.insert(0, str(out))
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    return trace_service_pb2, trace_service_pb2_grpc


def value(v) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON-lines file of the spans received")
    p.add_argument("--port-file", required=True, help="written with the gRPC and HTTP ports once serving")
    args = p.parse_args()
    import grpc

    with tempfile.TemporaryDirectory(prefix="otlp-stubs-") as stubs:
        pb, pb_grpc = load_stubs(Path(stubs))
        out = open(args.out, "a", buffering=1)
        lock = threading.Lock()

        def record(request) -> None:
            with lock:
                for resource_spans in request.resource_spans:
                    resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for s in scope_spans.spans:
                            line = {
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "name": s.name,
                                "kind": s.kind,
                                "start_ns": s.start_time_unix_nano,
                                "end_ns": s.end_time_unix_nano,
                                "status_code": s.status.code,
                                "attributes": {a.key: value(a.value) for a in s.attributes},
                                "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in s.links],
                                "service_name": resource.get("service.name"),
                                "scope": scope_spans.scope.name,
                            }
                            out.write(json.dumps(line) + "\n")

        class Traces(pb_grpc.TraceServiceServicer):
            def Export(self, request, context):
                record(request)
                return pb.ExportTraceServiceResponse()

        class Http(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404 if self.path != "/v1/traces" else 415)
                    self.end_headers()
                    return
                request = pb.ExportTraceServiceRequest()
                request.ParseFromString(body)
                record(request)
                answer = pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port} {http.server_address[1]}")
        os.replace(tmp, args.port_file)
        server.wait_for_termination()
    return 0


if __name__ == "__main__":
    _bootstrap()
    sys.exit(main())
