"""Writes the classify_request seed corpus: encoded ClassifyRequest messages, each prefixed by
the mode byte the fuzz target reads (even: reject oversize text, odd: truncate).
Run with the Python peer's venv, which has protobuf and the generated stubs:
  benches/peers/python/setup.sh && benches/peers/python/.venv/bin/python fuzz/seeds/make_requests.py"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../benches/peers/python/gen"))
from modserve.v1 import moderation_pb2 as pb  # noqa: E402

R = pb.Review
requests = {
    "one": pb.ClassifyRequest(reviews=[R(id="r1", text="you idiot")]),
    "tasks": pb.ClassifyRequest(reviews=[R(id="r1", text="great product")], tasks=["abuse", "fraud"], request_id="q"),
    "title_rating": pb.ClassifyRequest(reviews=[R(id="r1", text="ok", title="Meh", rating=3.5, language="en")]),
    "signals": pb.ClassifyRequest(reviews=[R(id="a", text="buy now", signals={"account_age_days": 2.0, "reviews_last_day": 9})]),
    "many": pb.ClassifyRequest(reviews=[R(id=str(i), text="w" * i) for i in range(9)]),
    "dup": pb.ClassifyRequest(reviews=[R(id="x", text="a"), R(id="x", text="b")]),
    "empty_id": pb.ClassifyRequest(reviews=[R(id=" ", text="a")]),
    "long": pb.ClassifyRequest(reviews=[R(id="l", text="é" * 100, title="t" * 70)]),
    "nan": pb.ClassifyRequest(reviews=[R(id="n", text="a", rating=float("nan"), signals={"s": float("inf")})]),
}
out = os.path.join(here, "classify_request")
os.makedirs(out, exist_ok=True)
for name, req in requests.items():
    for mode in (0, 1):
        with open(os.path.join(out, f"{name}-{mode}"), "wb") as f:
            f.write(bytes([mode]) + req.SerializeToString())
