"""Vector codec cost and fidelity: bytes on the wire, encode/decode time, cosine kept.

Usage: .venv/bin/python benchmarks/codecs.py [--n 20000] [--dim 256]
Vectors are seeded standard-normal draws (an embedding-like spread); the
embedder benchmark measures the recall effect on real photos.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from shoplens.contract.codecs import Encoding, decode_vector, encode_vector, encoded_size, payload_size  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    units = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = []
    for enc in Encoding:
        t0 = time.perf_counter()
        encoded = [encode_vector(v, enc) for v in vecs]
        t1 = time.perf_counter()
        decoded = np.stack([decode_vector(s, enc, args.dim) for s in encoded])
        t2 = time.perf_counter()
        cos = np.sum(decoded.astype(np.float64) * units, axis=1)
        rows.append(
            {
                "encoding": enc.value,
                "dim": args.dim,
                "payload_bytes": payload_size(args.dim, enc),
                "base64_chars": encoded_size(args.dim, enc),
                "encode_us": (t1 - t0) / args.n * 1e6,
                "decode_us": (t2 - t1) / args.n * 1e6,
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
            }
        )
    write_result("codecs", rows, notes=[f"{args.n} seeded standard-normal {args.dim}-d vectors, one vector per call (as the service decodes them)"])


if __name__ == "__main__":
    main()
