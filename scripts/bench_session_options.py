"""onnxruntime's session options, output binding and huge pages for the served call (one user
per call), each against the service's own settings in one run (issue 23's "cheaper inference").

    python scripts/bench_session_options.py --models-dir M

1. Session options: a session per variant (the memory arena off, memory patterns off,
   pre-packed weights off, basic or extended graph optimisation instead of all, denormals as
   zero), each checked against the default's scores, then timed in blocks of 280 calls that
   rotate through the variants, 8 blocks each, after a busy wait of 0 and 1 ms before every
   call (CPU time of the calling thread; a ratio to the default in the same blocks).
2. Output binding: `run_with_iobinding` into a preallocated buffer against `session.run`.
3. Huge pages: the process's large anonymous memory (the session's weights and packed buffers
   among it) backed by 2 MB pages, two ways — glibc's `glibc.malloc.hugetlb=1` tunable, set
   before the process starts, and `madvise(MADV_COLLAPSE)` once the session is warm — against
   neither, each a process of its own, alternated twice; gaps 0, 1 and 5 ms (a call after a
   pause costs 2–4× one after another call on this VM: docs/PERFORMANCE.md).
4. Control flow: the shipped graph against a copy with the network's path inlined (its `If`s
   replaced by the branches a known user with more than 5 and fewer than 200 positives takes:
   `--inline`, the exporter's node names), on such users, alternated, gaps 0 and 1 ms.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from service.bundle import current_version
from service.serving.onnx_model import Model, session_options

VARIANTS = ("default", "arena off", "mem pattern off", "prepacking off", "basic opt",
            "extended opt", "denormals zero")  # fmt: skip
MADV_COLLAPSE = 25  # Linux 6.1+
HUGE = 1 << 21
# The network's path in the shipped graph: not every row short, no row short, B's rows gathered
NETWORK_PATH = "node_cond_1__1=else_branch,node_cond__1=then_branch,node_cond__0=then_branch"


def options(name: str) -> ort.SessionOptions:
    chosen = session_options(1)
    if name == "arena off":
        chosen.enable_cpu_mem_arena = False
    elif name == "mem pattern off":
        chosen.enable_mem_pattern = False
    elif name == "prepacking off":
        chosen.add_session_config_entry("session.disable_prepacking", "1")
    elif name == "basic opt":
        chosen.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif name == "extended opt":
        chosen.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    elif name == "denormals zero":
        chosen.add_session_config_entry("session.set_denormal_as_zero", "1")
    return chosen


def spin(us: int) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def timed(fn, feeds, gap_us: int) -> list[float]:
    times = []
    for feed in feeds:
        spin(gap_us)
        started = time.thread_time()
        fn(feed)
        times.append(time.thread_time() - started)
    return times


def user_feeds(model: Model, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(model.bundle.user_ids), count)
    return [model._feeds([model.known_user(int(u))]) for u in users]


def compare_options(model: Model) -> None:
    path = str(model.bundle.onnx_path)
    sessions = {
        n: ort.InferenceSession(path, options(n), providers=["CPUExecutionProvider"])
        for n in VARIANTS
    }
    feeds = user_feeds(model, 300)
    reference = [sessions["default"].run(["scores"], f)[0] for f in feeds[:50]]
    for name, session in sessions.items():
        worst = max(
            float(np.abs(session.run(["scores"], f)[0] - r).max())
            for f, r in zip(feeds, reference, strict=False)
        )
        print(f"{name:16s} max |score - default's| {worst:.1e}")
    for gap in (0, 1000):
        times: dict[str, list[float]] = {n: [] for n in VARIANTS}
        for block in range(8):
            for name in VARIANTS[block % len(VARIANTS) :] + VARIANTS[: block % len(VARIANTS)]:
                run = sessions[name].run
                timed(lambda f, run=run: run(["scores"], f), feeds[:20], 0)  # warm
                times[name] += timed(lambda f, run=run: run(["scores"], f), feeds[20:], gap)
        base = statistics.median(times["default"])
        for name in VARIANTS:
            median = statistics.median(times[name])
            ratio = median / base
            print(f"gap {gap / 1000:g} ms  {name:16s} {median * 1e6:6.1f} µs  ({ratio:.2f}×)")


def compare_binding(model: Model) -> None:
    session = model.session
    feeds = user_feeds(model, 300)
    out = np.empty((1, model.n_items), np.float32)

    def bound(feed):
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("scores", "cpu", 0, np.float32, out.shape, out.ctypes.data)
        session.run_with_iobinding(binding)
        return out

    for feed in feeds[:50]:
        assert np.array_equal(bound(feed), session.run(["scores"], feed)[0])
    times: dict[str, list[float]] = {"session.run": [], "run_with_iobinding": []}
    for _ in range(10):
        times["session.run"] += timed(lambda f: session.run(["scores"], f), feeds, 0)
        times["run_with_iobinding"] += timed(bound, feeds, 0)
    for name, values in times.items():
        print(f"{name:20s} {statistics.median(values) * 1e6:6.1f} µs")


def collapse_anonymous_memory() -> int:
    """MADV_COLLAPSE over every writable anonymous mapping (and the heap) of 2 MB or more;
    returns the MB collapsed."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if "w" not in parts[1] or (len(parts) > 5 and parts[5] != "[heap]"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        low, high = -(-start // HUGE) * HUGE, end // HUGE * HUGE
        if high - low >= HUGE and libc.madvise(low, high - low, MADV_COLLAPSE) == 0:
            done += high - low
    return done >> 20


def huge_pages_child(models_dir: Path, mode: str) -> None:
    model = Model.load(models_dir / current_version(models_dir), threads=1)
    feeds = user_feeds(model, 600)
    timed(lambda f: model.session.run(["scores"], f), feeds[:200], 0)
    if mode == "collapse":
        collapse_anonymous_memory()
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    huge = next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages"))
    medians = []
    for gap in (0, 1000, 5000):
        values = timed(lambda f: model.session.run(["scores"], f), feeds, gap)
        medians.append(f"{statistics.median(values) * 1e6:6.1f}")
    print(f"{mode:8s} {huge // 1024:4d} MB in huge pages; median µs at gaps 0 / 1 / 5 ms: "
          f"{' / '.join(medians)}", flush=True)  # fmt: skip


def compare_huge_pages(models_dir: Path) -> None:
    for _ in range(2):
        for mode in ("none", "tunable", "collapse"):
            env = dict(os.environ)
            if mode == "tunable":
                env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
            command = [sys.executable, __file__, "--models-dir", str(models_dir), "--child", mode]
            subprocess.run(command, env=env, check=True)


def inline(graph: onnx.GraphProto, choice: dict[str, str]) -> None:
    """Each `If` named in `choice` replaced by the nodes of its chosen branch (recursively), the
    branch's outputs passed on under the `If`'s output names."""
    nodes = []
    for node in graph.node:
        if node.op_type == "If" and node.name in choice:
            branch = next(a.g for a in node.attribute if a.name == choice[node.name])
            inline(branch, choice)
            nodes.extend(branch.node)
            graph.initializer.extend(branch.initializer)
            for outer, inner in zip(node.output, branch.output, strict=True):
                nodes.append(onnx.helper.make_node("Identity", [inner.name], [outer]))
        else:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    inline(attribute.g, choice)
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def compare_inlined(model: Model, branches: str) -> None:
    graph = onnx.load(str(model.bundle.onnx_path))
    inline(graph.graph, dict(pair.split("=") for pair in branches.split(",")))
    ort.set_default_logger_severity(3)  # the other path's weights, unused, are dropped aloud
    inlined = ort.InferenceSession(
        graph.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"]
    )
    feeds = [f for f in user_feeds(model, 600) if 5 < f["items"].shape[1] < 200]  # the path inlined
    worst = max(
        float(np.abs(inlined.run(["scores"], f)[0] - model.session.run(["scores"], f)[0]).max())
        for f in feeds
    )
    print(f"{len(feeds)} users; max |score - shipped graph's| {worst:.1e}")
    sessions = {"shipped graph": model.session, "inlined": inlined}
    for gap in (0, 1000):
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for repeat in range(6):
            order = list(sessions) if repeat % 2 == 0 else list(sessions)[::-1]
            for name in order:
                run = sessions[name].run
                times[name] += timed(lambda f, run=run: run(["scores"], f), feeds, gap)
        figures = ", ".join(f"{n} {statistics.median(v) * 1e6:.1f} µs" for n, v in times.items())
        print(f"gap {gap / 1000:g} ms: {figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--inline", default=NETWORK_PATH, help="If name=branch, comma-separated")
    parser.add_argument("--child", choices=["none", "tunable", "collapse"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        huge_pages_child(args.models_dir, args.child)
        return
    model = Model.load(args.models_dir / current_version(args.models_dir), threads=1)
    print("== session options")
    compare_options(model)
    print("== output binding (gap 0)")
    compare_binding(model)
    print("== huge pages")
    compare_huge_pages(args.models_dir)
    print("== control flow (the network's path inlined)")
    compare_inlined(model, args.inline)


if __name__ == "__main__":
    main()
