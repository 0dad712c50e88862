"""Epoch time of the production fit in 1 and in N processes under torchrun, on synthetic data.

    python scripts/bench_distributed.py --size 1m --nproc 1 2      # docs/SCALE.md, "torchrun"
    python scripts/bench_distributed.py --size 200k --nproc 1 2 --epochs 1

The data set is scripts/bench_scale.py's (generated once, cached in --work). The parent loads
it once and writes the fit's inputs (every positive, the encoded profiles) as arrays; each
torchrun rank maps them and runs the CDDAE's production fit with the shipped defaults for
--epochs epochs (no validation, no evaluation: the part that is distributed), timed between
barriers. Prints and writes (--out) seconds per epoch, steps, and peak RSS per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_inputs(size: str, work: Path) -> Path:
    """The fit's inputs as arrays (written once per size)."""
    from scripts.bench_scale import SIZES, generate
    from training.data.prepared import ProtocolConfig, prepare

    inputs = work / size / "fit-inputs.npz"
    if inputs.exists():
        return inputs
    users, items, interactions = SIZES[size]
    data = generate(work / size / "data", users, items, interactions)
    prepared = prepare(data, ProtocolConfig(seed=0))
    ds, positives = prepared.dataset, prepared.positives
    np.savez(
        inputs,
        indptr=positives.indptr, indices=positives.indices, data=positives.data,
        shape=np.array(positives.shape), user_features=ds.user_features,
        item_features=ds.item_features,
    )  # fmt: skip
    return inputs


def worker(inputs: Path, epochs: int, out: Path) -> None:
    """One rank: the production fit for `epochs` epochs on the arrays."""
    import scipy.sparse as sp

    from training.jobs.pipeline import make_recommender
    from training.models.distributed import join
    from training.models.interface import FitContext

    world = join("cpu")
    arrays = np.load(inputs)
    shape = tuple(arrays["shape"])
    positives = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
    ctx = FitContext(positives, sp.csr_matrix(shape, dtype=np.float32), arrays["user_features"],
                     arrays["item_features"], seed=0, progress=False)  # fmt: skip
    recommender = make_recommender("cddae", train={"epochs": epochs})
    world.barrier()
    started = time.perf_counter()
    recommender.fit(ctx)
    world.barrier()
    seconds = time.perf_counter() - started
    peak = world.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    if world.main:
        users = int(np.count_nonzero(np.diff(positives.indptr)))
        batch = recommender.train_config.batch_size
        out.write_text(json.dumps({
            "processes": world.size, "epochs": epochs, "seconds": seconds,
            "seconds_per_epoch": seconds / epochs, "steps_per_epoch": -(-users // batch),
            "batch_per_rank": -(-batch // world.size), "peak_rss_gb": peak,
            "sampled_negatives": recommender.sampled, "threads": os.environ.get("OMP_NUM_THREADS"),
        }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1m")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cddae-scale"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale/distributed.json"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from training.models.distributed import leave

        worker(args.worker, args.epochs, args.result)
        leave(0)
        return
    inputs = write_inputs(args.size, args.work)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for nproc in args.nproc:
        result = args.work / args.size / f"distributed-{nproc}.json"
        threads = max(1, (os.cpu_count() or 1) // nproc)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(nproc), __file__, "--worker", str(inputs),
                   "--epochs", str(args.epochs), "--result", str(result)]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        figures = json.loads(result.read_text())
        results[f"{args.size}/{nproc}"] = figures
        print(f"{args.size}, {nproc} process(es) × {threads} thread(s): "
              f"{figures['seconds_per_epoch']:.0f} s per epoch, peak RSS per rank "
              f"{', '.join(f'{g:.1f}' for g in figures['peak_rss_gb'])} GB")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
