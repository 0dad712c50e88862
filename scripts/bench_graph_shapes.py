"""A bundle's onnxruntime time by input shape, for several bundles in one run (one thread).

    python scripts/bench_graph_shapes.py MODELS_DIR [MODELS_DIR ...] [--calls 500]

For each models folder's current bundle: one user with 3 history entries (a new visitor: the
short head where there is one), with 100, and with as many as the catalogue has items (the
longest a POST /score can send there), median and p99 per call; and one batch of 64 users × 100
entries. Random items, unit weights, no profile: the cost of
the graph's shapes, not of any user. Written to compare graph forms (docs/MODELS.md, the
linear path); figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.bundle import current_version, load_bundle


def _feeds(rng, n: int, width: int, batch: int, length: int) -> dict[str, np.ndarray]:
    return {
        "items": rng.integers(0, n, (batch, length)),
        "weights": np.ones((batch, length), np.float32),
        "user_features": np.zeros((batch, width), np.float32),
        "user_index": np.full(batch, -1, np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    for folder in args.models:
        bundle = load_bundle(folder / current_version(folder))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(bundle.onnx_path), options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        rng, n, width = np.random.default_rng(0), len(bundle.item_ids), bundle.user_spec.width

        cells = []
        for length in (3, 100, n):
            feed, times = _feeds(rng, n, width, 1, length), []
            for _ in range(args.calls):
                started = time.perf_counter()
                session.run(["scores"], feed)
                times.append((time.perf_counter() - started) * 1e3)
            times.sort()
            p99 = times[int(0.99 * (len(times) - 1))]
            cells.append(f"1 × {length}: {statistics.median(times):.3f} / {p99:.3f} ms")
        feed = _feeds(rng, n, width, 64, 100)
        started = time.perf_counter()
        session.run(["scores"], feed)
        cells.append(f"64 × 100: {(time.perf_counter() - started) * 1e3:.1f} ms")
        print(f"{folder} ({n:,} items): " + "; ".join(cells))


if __name__ == "__main__":
    main()
