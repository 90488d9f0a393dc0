#!/usr/bin/env python3
"""A modserve client to copy: classify reviews in batches, unary or over one stream, with
deadlines and the retry policy the README recommends.

  examples/python/classify.py --target 127.0.0.1:50051 [--reviews reviews.jsonl] [--stream]
      [--batch-size 32] [--deadline 2.0] [--attempts 5]
      [--token-file PATH | --token-env NAME] [--ca-file PATH]

Reviews are JSON lines ({"id": "r1", "text": "...", "title": "..."}); without --reviews a few
sample reviews are sent. Each review's result per task is printed as one JSON line on stdout;
retries and failures go to stderr. Exit status: 0 every review classified, 1 some call or
stream message failed (after its retries), 2 a usage error.

Status codes (the README's error table):
  RESOURCE_EXHAUSTED, UNAVAILABLE  retried: exponential backoff with full jitter, at most
                                   --attempts tries in all, each with its own deadline
  INVALID_ARGUMENT                 not retried: the message names the field to fix
  DEADLINE_EXCEEDED                not retried: the deadline is the caller's budget; retrying at
                                   once adds load where the server is already slow
  UNAUTHENTICATED                  not retried: give the token (--token-file or --token-env)
  PERMISSION_DENIED                not retried: this token may not call this service
  OUT_OF_RANGE                     not retried: the message is over the server's size limit;
                                   send smaller batches
  INTERNAL and anything else       not retried: the same request would fail the same way

Dependencies (examples/python/requirements.txt) are installed on first use into
.tools/examples-venv and the script re-runs itself there; the gRPC stubs are generated from
proto/ at run time into a temporary directory (never committed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / ".tools" / "examples-venv"
REQUIREMENTS = HERE / "requirements.txt"

# Backoff: the n-th retry waits a random time in [0, min(CAP, BASE * 2**(n-1))] ("full jitter"),
# so clients that failed together do not come back together.
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0

SAMPLE_REVIEWS = [
    {"id": "r1", "text": "You are an idiot and a liar."},
    {"id": "r2", "text": "Great blender, arrived fast, works as described."},
    {"id": "r3", "text": "WIN a FREE iPhone!!! visit www.cheap-deals.biz or call 555-0199 now"},
]


# --- Bootstrap: dependencies and stubs -------------------------------------------------------


def _bootstrap() -> None:
    """Re-runs the script under .tools/examples-venv, installing the pinned dependencies first."""
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401

        return
    except ImportError:
        pass
    stage = os.environ.get("MODSERVE_EXAMPLES_BOOTSTRAPPED", "0")
    if stage == "2":
        sys.exit(f"classify.py: dependencies still missing after installing them into {VENV}")
    python = VENV / "bin" / "python"
    if stage == "0" and python.exists():  # the venv as it is first: no pip run when it is complete
        os.environ["MODSERVE_EXAMPLES_BOOTSTRAPPED"] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    if not python.exists():
        print(f"classify.py: creating {VENV} ...", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    print(f"classify.py: installing {REQUIREMENTS.name} into {VENV} ...", file=sys.stderr)
    subprocess.check_call(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    )
    os.environ["MODSERVE_EXAMPLES_BOOTSTRAPPED"] = "2"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def load_stubs(out: Path):
    """Generates the Python stubs of proto/ into `out` and imports them."""
    import grpc_tools
    from grpc_tools import protoc

    proto_dir = ROOT / "proto"
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        sys.exit(f"classify.py: protoc failed on {proto_dir}")
    sys.path.insert(0, str(out))
    from modserve.v1 import moderation_pb2, moderation_pb2_grpc

    return moderation_pb2, moderation_pb2_grpc


# --- The retry policy ------------------------------------------------------------------------

# Filled in main() once grpc is importable.
RETRYABLE: set = set()
ADVICE: dict = {}
CODES: dict = {}  # the numeric code of a stream message's error -> grpc.StatusCode


def code_name(code) -> str:
    return code.name if code is not None else "UNKNOWN"


def advice(code) -> str:
    return ADVICE.get(code, "not retried")


def backoff(retry: int) -> float:
    """The wait before retry number `retry` (1-based): full jitter."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1)))


def with_retries(call, attempts: int):
    """Runs `call()` (one attempt: a unary call or a whole stream) until it succeeds, fails with
    a status that is not retried, or has been tried `attempts` times. Returns the result, or
    raises the last grpc.RpcError."""
    import grpc

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except grpc.RpcError as e:
            code = e.code()
            if code not in RETRYABLE or attempt == attempts:
                raise
            wait = backoff(attempt)
            print(
                f"retry {attempt}/{attempts - 1} after {code_name(code)}: {e.details()}; waiting {wait:.3f} s",
                file=sys.stderr,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


# --- Requests and results --------------------------------------------------------------------


def read_reviews(path: str | None) -> list[dict]:
    if path is None:
        return SAMPLE_REVIEWS
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def batches(pb, reviews: list[dict], size: int) -> list:
    out = []
    for start in range(0, len(reviews), size):
        chunk = reviews[start : start + size]
        out.append(
            pb.ClassifyRequest(
                reviews=[pb.Review(id=r["id"], text=r["text"], title=r.get("title")) for r in chunk],
                request_id=f"batch-{start // size}",
            )
        )
    return out


def print_results(pb, response) -> None:
    for result in response.results:
        for task in result.tasks:
            line = {
                "review_id": result.review_id,
                "task": task.task,
                "decision": pb.Decision.Name(task.decision).removeprefix("DECISION_"),
                "model": task.model.name,
            }
            print(json.dumps(line), flush=True)


def report_failure(what: str, error) -> None:
    code = error.code()
    print(f"{what}failed: {code_name(code)}: {error.details()} ({advice(code)})", file=sys.stderr)


def classify_unary(pb, stub, requests, opts, metadata) -> bool:
    import grpc

    ok = True
    for request in requests:
        try:
            call = functools.partial(stub.Classify, request, timeout=opts.deadline, metadata=metadata)
            response = with_retries(call, opts.attempts)
        except grpc.RpcError as e:
            report_failure("", e)
            ok = False
            continue
        print_results(pb, response)
    return ok


def classify_stream(pb, stub, requests, opts, metadata) -> bool:
    """One ClassifyStream for every batch: one response per message, in order. A message
    answered with an error is retried on its own (unary) when its code is retryable; when the
    stream itself fails with a retryable status, the messages not yet answered are sent again
    on a new stream. The deadline covers each stream attempt as a whole."""
    import grpc

    ok = True
    pending = list(requests)

    def one_stream():
        nonlocal ok
        answered = 0
        try:
            for response in stub.ClassifyStream(iter(list(pending)), timeout=opts.deadline, metadata=metadata):
                index = answered
                answered += 1
                if response.HasField("error") and response.error.code != 0:
                    code = CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
                    if code in RETRYABLE:
                        request = pending[index]
                        call = functools.partial(stub.Classify, request, timeout=opts.deadline, metadata=metadata)
                        try:
                            response = with_retries(call, opts.attempts)
                        except grpc.RpcError as e:
                            report_failure(f"message {request.request_id} ", e)
                            ok = False
                            continue
                    else:
                        print(
                            f"message {pending[index].request_id} failed: {code_name(code)}: "
                            f"{response.error.message} ({advice(code)})",
                            file=sys.stderr,
                        )
                        ok = False
                        continue
                print_results(pb, response)
        finally:
            # What was answered is done, whatever happens next.
            del pending[:answered]

    try:
        with_retries(one_stream, opts.attempts)
    except grpc.RpcError as e:
        report_failure("stream ", e)
        return False
    return ok


# --- Main ------------------------------------------------------------------------------------


def usage_error(message: str):
    print(f"classify.py: {message}", file=sys.stderr)
    sys.exit(2)


def secret(path: str | None, env: str | None) -> str | None:
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            usage_error(f"--token-file {path}: {e.strerror}")
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            usage_error(f"--token-env {env}: the environment variable is not set")
        return value
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gRPC listener")
    parser.add_argument("--reviews", help="JSON lines of reviews (default: three samples)")
    parser.add_argument("--stream", action="store_true", help="send every batch over one ClassifyStream")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="reviews per request (at most limits.max_reviews_per_request)"
    )
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per attempt (a call, or a whole stream)")
    parser.add_argument("--attempts", type=int, default=5, help="tries in all for RESOURCE_EXHAUSTED and UNAVAILABLE")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", help="file holding the bearer token (server.moderation_token_file)")
    token.add_argument("--token-env", help="environment variable holding the bearer token")
    parser.add_argument("--ca-file", help="PEM CA of the server's certificate: use TLS")
    opts = parser.parse_args()
    if opts.attempts < 1 or opts.batch_size < 1 or opts.deadline <= 0:
        parser.error("--attempts and --batch-size must be at least 1, --deadline positive")

    _bootstrap()
    import grpc

    RETRYABLE.update({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
    CODES.update({code.value[0]: code for code in grpc.StatusCode})
    ADVICE.update(
        {
            grpc.StatusCode.RESOURCE_EXHAUSTED: f"gave up after {opts.attempts} attempts",
            grpc.StatusCode.UNAVAILABLE: f"gave up after {opts.attempts} attempts",
            grpc.StatusCode.INVALID_ARGUMENT: "not retried: fix the field named",
            grpc.StatusCode.DEADLINE_EXCEEDED: "not retried: raise --deadline or send smaller batches",
            grpc.StatusCode.UNAUTHENTICATED: "not retried: give the token with --token-file or --token-env",
            grpc.StatusCode.PERMISSION_DENIED: "not retried: this token may not call this service",
            grpc.StatusCode.OUT_OF_RANGE: "not retried: the message is too large; send smaller batches",
            grpc.StatusCode.INTERNAL: "not retried: the server failed on this request; it keeps serving others",
        }
    )

    with tempfile.TemporaryDirectory(prefix="modserve-stubs-") as stubs:
        pb, pb_grpc = load_stubs(Path(stubs))
        bearer = secret(opts.token_file, opts.token_env)
        metadata = [("authorization", f"Bearer {bearer}")] if bearer else None
        if opts.ca_file:
            try:
                root = Path(opts.ca_file).read_bytes()
            except OSError as e:
                usage_error(f"--ca-file {opts.ca_file}: {e.strerror}")
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            channel = grpc.secure_channel(opts.target, credentials)
        else:
            channel = grpc.insecure_channel(opts.target)
        with channel:
            stub = pb_grpc.ModerationStub(channel)
            try:
                reviews = read_reviews(opts.reviews)
            except (OSError, ValueError, KeyError) as e:
                usage_error(f"--reviews {opts.reviews}: {e}")
            requests = batches(pb, reviews, opts.batch_size)
            run = classify_stream if opts.stream else classify_unary
            return 0 if run(pb, stub, requests, opts, metadata) else 1


if __name__ == "__main__":
    sys.exit(main())
