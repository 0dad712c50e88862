"""Inference speed, onnxruntime against PyTorch eager, in one run on this machine.

    python scripts/bench_inference.py --checkpoint runs/cddae --models-dir models

Measures: bundle load (verify + onnxruntime session), parity, all users in one batch, and one
user at a time (median and p99 per call), for both runtimes, with the same threads (1).
With --int8: the bundle's graph dynamically quantised (onnxruntime.quantization, int8 weights,
the `If` branches' MatMuls too),
its time per user beside the float graph's and its top-10 agreement with it (every user, seen
items excluded): what shipping it would buy and cost.
With --gaps (µs, e.g. 0,1000,5000): one user per call again, each call after a busy wait of
that long, in CPU time of the calling thread — what a call costs when it is not the last thing
the core did (a service between requests), not only back to back.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from service.bundle import current_version
from service.serving.onnx_model import Model
from training.jobs.checkpoint import Checkpoint
from training.jobs.export import INPUTS, InferencePath, model_inputs
from training.jobs.pipeline import restore


def _timed(fn, repeats: int) -> list[float]:
    return _timed_each(lambda _: fn(), range(repeats))


def _timed_each(fn, arguments) -> list[float]:
    """Seconds per call of fn(a) for each a."""
    out = []
    for argument in arguments:
        start = time.perf_counter()
        fn(argument)
        out.append(time.perf_counter() - start)
    return out


def _gapped(fn, arguments, gap: float) -> list[float]:
    """CPU seconds of the calling thread per call of fn(a), each after `gap` seconds of a busy
    wait that touches no memory (the core stays awake: what is lost meanwhile is the caches)."""
    out = []
    for argument in arguments:
        end = time.perf_counter() + gap
        while time.perf_counter() < end:
            pass
        start = time.thread_time()
        fn(argument)
        out.append(time.thread_time() - start)
    return out


def gaps(label: str, fn, arguments, gaps_us: list[int]) -> None:
    for gap in gaps_us:
        times = _gapped(fn, arguments, gap / 1e6)
        print(f"  {label} after {gap:5d} µs: {_p(times, 50):6.3f} / {_p(times, 99):6.3f} ms CPU")


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--single-calls", type=int, default=2000)
    parser.add_argument("--batch-repeats", type=int, default=30)
    parser.add_argument("--int8", action="store_true", help="also the int8 quantised graph")
    parser.add_argument("--gaps", default="", help="µs of busy wait before each call: 0,1000")
    parser.add_argument("--gap-calls", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)

    version = current_version(args.models_dir)
    folder = args.models_dir / version
    loads = _timed(lambda: Model.load(folder, threads=1), 5)
    model = Model.load(folder, threads=1)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"bundle {version}: {size / 1e6:.2f} MB; load (verify + session) median "
          f"{statistics.median(loads) * 1e3:.1f} ms")  # fmt: skip
    print(f"parity (recorded at export): {model.bundle.manifest['parity']}")

    checkpoint = Checkpoint.load(args.checkpoint)
    module = InferencePath(restore(checkpoint, served=True), checkpoint.kind).eval()
    inputs = model_inputs(checkpoint, np.arange(checkpoint.positives.shape[0]))
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
    n = inputs[0].shape[0]

    with torch.no_grad():
        torch_batch = _timed(lambda: module(*inputs), args.batch_repeats)
    ort_batch = _timed(lambda: model.session.run(["scores"], feeds), args.batch_repeats)
    print(f"\nall {n} users in one batch (median of {args.batch_repeats}):")
    print(f"  torch eager   {_p(torch_batch, 50):8.2f} ms")
    print(f"  onnxruntime   {_p(ort_batch, 50):8.2f} ms   ratio torch/ort "
          f"{_p(torch_batch, 50) / _p(ort_batch, 50):.2f}")  # fmt: skip

    rng = np.random.default_rng(0)
    users = rng.integers(0, n, size=args.single_calls)
    one = [tuple(t[u : u + 1] for t in inputs) for u in users]
    with torch.no_grad():
        torch_single = _timed_each(lambda a: module(*a), one)
    queries = [model.known_user(int(u)) for u in users]
    ort_single = _timed_each(lambda q: model.scores([q]), queries)
    raw_feeds = [{k: v[u : u + 1] for k, v in feeds.items()} for u in users]
    ort_raw = _timed_each(lambda f: model.session.run(["scores"], f), raw_feeds)
    print(f"\none user per call ({args.single_calls} calls): median / p99")
    print(f"  torch eager             {_p(torch_single, 50):6.3f} / {_p(torch_single, 99):6.3f} ms")
    print(f"  onnxruntime (session)   {_p(ort_raw, 50):6.3f} / {_p(ort_raw, 99):6.3f} ms   "
          f"ratio torch/ort {_p(torch_single, 50) / _p(ort_raw, 50):.2f}")  # fmt: skip
    print(f"  onnxruntime (+ input)   {_p(ort_single, 50):6.3f} / {_p(ort_single, 99):6.3f} ms")
    rank = _timed_each(lambda q: model.rank(q, model.scores([q])[0], 10, list(q.weights)), queries)
    print(f"  service path (input + run + top-10)  {_p(rank, 50):6.3f} / {_p(rank, 99):6.3f} ms")
    gaps_us = [int(g) for g in args.gaps.split(",") if g]
    if gaps_us:
        print(f"\none user per call after a gap (the first {args.gap_calls} calls), median / p99:")
        gaps("float", lambda q: model.scores([q]), queries[: args.gap_calls], gaps_us)
    if args.int8:
        int8(model, queries, ort_single, gaps_us, queries[: args.gap_calls])


def int8(
    model: Model, queries: list, float_times: list[float], gaps_us: list[int], gap_queries: list
) -> None:
    """The int8 graph against the float one: time per user and top-10 agreement."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from service.serving.onnx_model import session_options, top_n

    with tempfile.TemporaryDirectory() as tmp:
        quantised = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            str(model.bundle.onnx_path),
            str(quantised),
            weight_type=QuantType.QInt8,
            extra_options={"EnableSubgraph": True},
        )
        size = quantised.stat().st_size / 1e6
        cpu = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(quantised), session_options(1), providers=cpu)

    def scores(query):
        return session.run(["scores"], model._feeds([query]))[0]

    times = _timed_each(scores, queries)
    agree = []
    for user in range(len(model.bundle.user_ids)):
        query = model.known_user(user)
        exact, _ = top_n(model.scores([query])[0], 10, query.excluded())
        rough, _ = top_n(scores(query)[0], 10, query.excluded())
        agree.append(len(set(exact.tolist()) & set(rough.tolist())) / max(len(exact), 1))
    whole = 100 * float(np.mean(np.equal(agree, 1)))
    print(f"\nint8 graph ({size:.2f} MB): one user {_p(times, 50):6.3f} / {_p(times, 99):6.3f} ms "
          f"(float {_p(float_times, 50):6.3f}); top-10 agreement with the float graph "
          f"{100 * float(np.mean(agree)):.2f}% (lists all equal: {whole:.1f}%)")  # fmt: skip
    gaps("int8 ", scores, gap_queries, gaps_us)


if __name__ == "__main__":
    main()
