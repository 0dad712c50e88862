"""`cddae`: the project's one command-line tool.

Heavy imports (torch, scipy) happen inside the commands that need them, so `cddae serve` runs
in the serving image, which has neither.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from training.evaluation.tables import metrics_table
from training.names import NEURAL


def _load_config(path: Path | None) -> dict[str, Any]:
    """A JSON or TOML file with optional sections `model`, `train`, `protocol`, `preset`,
    `features` (`{"user": {"field": "categorical|multi|bucket|numeric|ignore"}}`) and
    `cold_items` (the cold-item head's options; `{"epochs": 0}` trains none)."""
    if path is None:
        return {}
    text = path.read_text()
    config = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    sections = {"model", "train", "protocol", "preset", "features", "cold_items"}
    if unknown := set(config) - sections:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}")
    return config


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


def cmd_fetch(args: argparse.Namespace) -> None:
    from training.data.fetch import fetch_ml100k, fetch_movielens

    if args.dataset == "ml-100k":
        fetch_ml100k(args.dest, args.source)
    else:
        fetch_movielens(args.dataset, args.dest, args.source)


def cmd_train(args: argparse.Namespace) -> None:
    from training.data.prepared import ProtocolConfig, prepare
    from training.jobs.pipeline import train_and_evaluate
    from training.models.distributed import join

    config = _load_config(args.config)
    protocol = ProtocolConfig(**{**config.get("protocol", {}), "seed": args.seed})
    if args.protocol:
        protocol.name = args.protocol
    user_fields = config.get("features", {}).get("user")
    prepared = prepare(args.data, protocol, args.train_file, args.test_file, user_fields)
    train = config.get("train")
    if args.device:
        train = {**(train or {}), "device": args.device}
    world = join((train or {}).get("device", "cpu"))  # under torchrun; else a world of one
    if world.size > 1 and args.model not in NEURAL:
        raise ValueError(f"torchrun trains the autoencoders ({', '.join(NEURAL)}); "
                         f"{args.model} fits in one process")  # fmt: skip
    _, checkpoint = train_and_evaluate(
        args.model,
        prepared,
        seed=args.seed,
        preset=args.preset or config.get("preset", "default"),
        model=config.get("model"),
        train=train,
        progress=not args.quiet,
        final_fit=not args.no_final_fit,
        cold=config.get("cold_items"),
        eval_users=args.eval_users,
    )
    if not world.main:  # rank 0 writes and reports
        return
    if args.output:
        checkpoint.save(args.output)
    meta = checkpoint.meta
    if meta["world_size"] > 1:
        print(f"trained in {meta['world_size']} processes (torchrun, DistributedDataParallel)")
    print(
        f"{args.model} on {meta['data']['source']} — protocol {checkpoint.meta['protocol']['name']}"
        f", seed {args.seed}, {meta['evaluated_users']} users evaluated, "
        f"fit {meta['fit_seconds']:.1f} s"
    )
    if draws := meta["params"].get("sampled_negatives"):
        print(f"item loss: sampled, the batch's positives and {draws:,} drawn items "
              f"({meta['data']['items']:,} in the catalogue; docs/SCALE.md)")  # fmt: skip
    if (linear := meta["params"].get("linear_path", "off")) != "off":
        print(f"linear path (items × items beside the network): {linear}")
    if (short := meta["params"].get("short_head", "off")) != "off":
        print(f"short head (the network's copy for short histories): {short}")
    print(metrics_table(meta["metrics"]))
    _print_sampling(meta["evaluation"])
    served = meta["served"]
    if served["fit_seconds"] is not None:
        print(
            f"served model: fit on all data ({served['positives']} positives) in "
            f"{served['fit_seconds']:.1f} s"
        )
    else:
        print("served model: the evaluated one (--no-final-fit); export it only for testing")
    if cold := meta.get("cold_items"):
        print(f"cold-item head: {cold['head']}, {cold['steps']} steps in {cold['seconds']:.1f} s")
    _write_json(args.json, {"model": args.model, **meta})


def _processes(text: str) -> int:
    """`--nproc`: 1 to 64 processes."""
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"expected a count of processes, 1 to 64; got {text!r}")
    return int(text)


def _eval_users(text: str) -> int:
    """`--eval-users`: a count the intervals hold for, or "all" (every evaluable user)."""
    from training.evaluation.metrics import MIN_SAMPLE  # numpy and scipy: not for every command

    if text == "all":
        return sys.maxsize
    if not text.isdigit() or int(text) < MIN_SAMPLE:
        raise argparse.ArgumentTypeError(
            f"expected a count of at least {MIN_SAMPLE:,} (the intervals need it), or 'all'; "
            f"got {text!r}"
        )
    return int(text)


def cmd_new_users(args: argparse.Namespace) -> None:
    from training.experiments.new_users import run, table

    kinds = tuple(k for k in args.models.split(",") if k)
    config = json.loads(args.config.read_text()) if args.config else {}  # {kind: {model, train}}
    results = run(args.data, kinds, args.seed, args.fraction, config=config)
    for metric in ("P@10", "R@10", "NDCG@10"):
        print()
        print(table(results, metric))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def cmd_cold_items(args: argparse.Namespace) -> None:
    from training.experiments.new_items import average, plot, run_seed, table

    args.output.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(args.data, seed))
        (args.output / f"seed-{seed}.json").write_text(json.dumps(runs[-1], indent=1) + "\n")
        print(f"seed {seed}: head {runs[-1]['head']['setting']}, "
              f"R@10 {runs[-1]['held only']['cold-item head (CDDAE)']['R@10']:.4f}")  # fmt: skip
    mean = average(runs)
    (args.output / "mean.json").write_text(json.dumps(mean, indent=1) + "\n")
    plot(mean, args.output / "cold_items.png")
    print(table(mean))


def cmd_similar_items(args: argparse.Namespace) -> None:
    from training.experiments.similar_items import run, table

    results = run(args.data, args.anchor_items, args.seed, args.checkpoint)
    print(table(results))
    _write_json(args.json, results)


def cmd_tune(args: argparse.Namespace) -> None:
    from training.experiments.tuning import tune

    kinds = tuple(k for k in args.models.split(",") if k)
    settings = json.loads(args.settings.read_text()) if args.settings else None
    report = tune(args.data, kinds, args.budget, args.seed, settings=settings,
                  protocol=args.protocol)  # fmt: skip
    for kind, chosen in report["models"].items():
        print(f"{kind:8s} validation NDCG@10 {chosen['NDCG@10']:.4f}  {chosen['chosen']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.data.loaders import load_interactions_csv
    from training.evaluation.metrics import evaluate_sampled
    from training.jobs.checkpoint import Checkpoint
    from training.jobs.pipeline import ranker, restore

    checkpoint = Checkpoint.load(args.checkpoint)
    test = checkpoint.test
    if args.test_file is not None:
        test = _map_test_file(checkpoint, load_interactions_csv(args.test_file))
    rank = ranker(restore(checkpoint), checkpoint.user_features)  # in chunks: no users × items
    started = time.perf_counter()
    scored, sampling = evaluate_sampled(rank, checkpoint.train, test, args.eval_users, args.seed)
    seconds = time.perf_counter() - started
    results = {k: v.tolist() for k, v in scored.items()}
    print(f"{checkpoint.kind} from {args.checkpoint}: {sampling.users:,} users in {seconds:.1f} s")
    print(metrics_table(results))
    _print_sampling(sampling.summary())
    evaluation = {"evaluation": sampling.summary(), "seconds": round(seconds, 3)}
    _write_json(args.json, {"model": checkpoint.kind, "metrics": results, **evaluation})


def _print_sampling(evaluation: dict[str, Any]) -> None:
    """The sample and its intervals, when the evaluation took one."""
    if evaluation["sampled"]:
        widths = ", ".join(f"{k} ±{v:.4f}" for k, v in evaluation["ci95"].items())
        print(f"evaluated on a random sample of {evaluation['users']:,} of {evaluation['of']:,} "
              f"users (seed {evaluation['seed']}); 95% intervals: {widths}")  # fmt: skip


def _map_test_file(checkpoint, inter):
    """Positives of a test CSV under the checkpoint's id maps, training items removed (rows
    with ids the checkpoint does not know are dropped). Vectorised: no loop per row."""
    import numpy as np
    import scipy.sparse as sp

    from service.bundle import IdIndex

    users, items, ratings, _ = inter.columns()
    rows = IdIndex(checkpoint.user_ids.astype(str)).lookup(users.vocab.astype(str))[users.codes]
    cols = IdIndex(checkpoint.item_ids.astype(str)).lookup(items.vocab.astype(str))[items.codes]
    positive = inter.implicit | (ratings >= checkpoint.meta["data"]["threshold"])
    keep = positive & (rows >= 0) & (cols >= 0)
    shape = checkpoint.train.shape
    test = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=shape
    )
    test.data[:] = 1.0
    return (test - test.multiply(checkpoint.train)).tocsr()


def cmd_recommend(args: argparse.Namespace) -> None:
    import numpy as np

    from training.evaluation.metrics import mask_seen, top_n
    from training.jobs.checkpoint import Checkpoint
    from training.jobs.pipeline import restore

    checkpoint = Checkpoint.load(args.checkpoint)
    recommender = restore(checkpoint, served=True)  # what the service would serve
    n_users = len(checkpoint.user_ids)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as out:
        out.write("user\titem\trank\tscore\n")
        for start in range(0, n_users, 1024):  # users in chunks: memory bound by the chunk
            users = np.arange(start, min(start + 1024, n_users))
            history = checkpoint.positives[users]
            scores = recommender.score(history, users, checkpoint.user_features[users])
            masked = mask_seen(scores, checkpoint.seen[users])
            lists = top_n(masked, args.n)
            for row, user in enumerate(users):
                for rank, item in enumerate(lists[row], start=1):
                    score = masked[row, item]
                    if np.isfinite(score):  # fewer unseen items than n: the list is shorter
                        out.write(f"{checkpoint.user_ids[user]}\t{checkpoint.item_ids[item]}"
                                  f"\t{rank}\t{score:.6g}\n")  # fmt: skip
    print(f"wrote {n_users} users × {args.n} items to {args.output}")


def cmd_export(args: argparse.Namespace) -> None:
    from training.jobs.checkpoint import Checkpoint
    from training.jobs.export import export_checkpoint

    version, figures = export_checkpoint(Checkpoint.load(args.checkpoint), args.models_dir)
    print(
        f"wrote bundle {version} to {args.models_dir}: parity max |Δ| "
        f"{figures['max_abs_diff']:.2e}, top-10 agreement {figures['top10_agreement']:.2%}"
    )
    if args.promote:
        _promote(args.models_dir, version, args.force)


def _promote(models_dir: Path, version: str, force: bool) -> None:
    """Promote by hand (`export --promote`, `models promote`): refused when the version's place
    in the event log lies before the last trim (a retrain from it would lose what came in
    between), unless forced."""
    from service.bundle import promote

    _refuse_if_before_trim(models_dir, version, force)
    promote(models_dir, version)
    print(f"promoted {version}")


def _refuse_if_before_trim(models_dir: Path, version: str, force: bool) -> None:
    """Promote and rollback alike: a version whose place in the log lies before the last trim
    would make the next retrain lose the events in between."""
    from training.jobs.retrain import lost_to_trim

    with contextlib.suppress(RuntimeError):  # an unreadable manifest: promote refuses it
        if (reason := lost_to_trim(models_dir, version)) and not force:
            raise ValueError(f"{reason}; --force puts it in service all the same")


def cmd_models(args: argparse.Namespace) -> None:
    from service import bundle

    models_dir = args.models_dir
    if args.action == "list":
        current = bundle.current_version(models_dir)
        print(f"{'':2}{'version':<34}{'kind':<8}{'created':<27}{'P@10':>8}{'R@10':>8}")
        for version in bundle.list_versions(models_dir):
            try:
                m = bundle.read_manifest(models_dir / version)
            except bundle.BundleError as error:
                print(f"  {version:<34}unreadable: {error}")
                continue
            metrics = m.get("metrics", {})
            print(
                f"{'*' if version == current else ' '} {version:<34}{m['model']['kind']:<8}"
                f"{m['created_at']:<27}{metrics.get('P@10', float('nan')):>8.4f}"
                f"{metrics.get('R@10', float('nan')):>8.4f}"
            )
    elif args.action == "promote":
        _promote(models_dir, args.words[0], args.force)
    elif args.action == "experiment":
        _experiment(args)
    elif args.action == "rollback":
        _refuse_if_before_trim(models_dir, bundle.rollback_target(models_dir)[0], args.force)
        print(f"rolled back to {bundle.rollback(models_dir)}")
    elif args.action == "gc":
        from service.experiment import collect

        removed = collect(models_dir, args.keep)  # a running experiment's versions stay
        print(f"removed {len(removed)} version(s): {' '.join(removed) or '-'}")


def _experiment(args: argparse.Namespace) -> None:
    """`models experiment start VERSION | status | stop`: the file every replica follows."""
    from service import experiment as ex
    from service.config import Settings
    from service.state.online import read_counts
    from training.evaluation.online_report import experiment_status

    words, models_dir = args.words, args.models_dir
    if words[:1] == ["start"] and len(words) == 2:
        started = ex.start_experiment(models_dir, words[1], args.share, args.shadow)
        mode = "shadow, never served" if started.shadow else "served"
        print(f"experiment {started.id} started: candidate {started.candidate} for "
              f"{started.share:.0%} of users ({mode}); control {started.control}")  # fmt: skip
    elif words == ["status"]:
        running = ex.read_experiment(models_dir)
        if running is None:
            print("no experiment is running")
            return
        settings = Settings()  # where the service keeps its counts: CDDAE_REDIS_URL or the file
        print(experiment_status(read_counts(settings.redis_url, settings.interactions_log),
                                running))  # fmt: skip
    elif words == ["stop"]:
        if not args.promote:
            stopped = ex.stop_experiment(models_dir)
            print(f"experiment {stopped.id if stopped else '(unreadable file)'} stopped")
            return
        running = ex.read_experiment(models_dir)
        if running is None:
            raise ex.ExperimentError("no experiment is running")
        _refuse_if_before_trim(models_dir, running.candidate, args.force)
        ex.stop_experiment(models_dir, promote=running)  # both in one step, under the lock
        print(f"promoted {running.candidate}\nexperiment {running.id} stopped")
    else:
        raise ValueError("usage: cddae models experiment start VERSION [--share S] [--shadow] "
                         "| status | stop [--promote]")  # fmt: skip


def cmd_report(args: argparse.Namespace) -> None:
    """`report online`: each version's online rate with its interval beside its offline
    metrics, as a table (and JSON) and a plot of rates over time."""
    import datetime as dt

    from service.config import Settings
    from service.state.online import read_counts
    from training.evaluation.online_report import online_rows, online_text, plot_rates

    settings = Settings()
    counts = read_counts(settings.redis_url, settings.interactions_log)
    since = dt.datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    rows = online_rows(args.models_dir, counts, since)
    print(online_text(rows) if rows else "no lists recorded yet")
    _write_json(args.json, {"versions": rows})
    plot_rates(counts, since, args.plot, args.hours)
    print(f"plot: {args.plot}")


def cmd_retrain(args: argparse.Namespace) -> int:
    from training.jobs.retrain import Outcome

    try:
        return _retrain(args)
    except Exception as error:  # settings, config, the store: "failed" (2), never 1 (gated)
        print(f"retrain: failed — {type(error).__name__}: {error}")
        return int(Outcome.FAILED)


def _retrain(args: argparse.Namespace) -> int:
    from service.config import Settings
    from training.jobs.retrain import EventSource, FileEvents, RedisEvents, retrain

    settings = Settings()  # where the service stores events: CDDAE_REDIS_URL or the file
    redis_url = args.redis_url or (None if args.events else settings.redis_url)
    source: EventSource
    if redis_url:
        source = RedisEvents(redis_url)
    else:
        source = FileEvents(args.events or settings.interactions_log)
    config = _load_config(args.config)
    outcome = retrain(
        args.data, args.models_dir, source, args.model, args.seed, args.gate, args.output, config,
        trim=args.trim, new_store=args.new_store, nproc=args.nproc,
    )  # fmt: skip
    return int(outcome)  # 0 promoted, 1 gated, 2 failed, 3 locked: cron reports all but 0


def cmd_serve(args: argparse.Namespace) -> None:
    from service.api.server import serve
    from service.config import Settings

    settings = Settings(models_dir=args.models_dir)  # every other setting: CDDAE_* variables
    serve(settings, args.host, args.port, args.log_level)


def cmd_experiments(args: argparse.Namespace) -> None:
    import shlex

    from training.data.loaders import load_dataset
    from training.experiments.paper import paper_settings, run_all
    from training.experiments.paper_report import write_report

    source = load_dataset(args.data).source  # fails early, with the file and line, if malformed
    settings = paper_settings(quick=args.quick)
    seeds = list(range(args.seeds if args.seeds is not None else 2 if args.quick else 5))
    train = {"epochs": args.epochs} if args.epochs else {}
    print(f"{len(settings)} settings × {len(seeds)} seeds = {len(settings) * len(seeds)} runs")
    new_users = _new_users_files(args.new_users_json or [], len(seeds))  # before any run
    results = run_all(args.data, settings, seeds, train, workers=args.workers)
    if not new_users and not args.no_new_users:
        from tqdm.auto import tqdm

        from training.experiments.new_users import run

        capped = {kind: {"train": train} for kind in NEURAL} if train else {}
        for seed in tqdm(seeds, desc="new users"):
            new_users.append(run(args.data, seed=seed, config=capped, log=lambda _: None))
    command = "cddae " + shlex.join(args.argv)
    report = write_report(results, settings, args.output, command, seeds, source, new_users)
    minutes = results["_elapsed"][0]["seconds"] / 60
    print(f"wrote {report} in {minutes:.1f} min")


def _new_users_files(paths: list[Path], seeds: int) -> list[dict]:
    """The new-users section's runs from `cddae new-users --seed S --json F` files, one per
    seed in order ([] without files): {row: {K: metrics}} with K back to numbers."""
    if paths and len(paths) != seeds:
        raise ValueError(f"--new-users-json takes one file per seed ({seeds}), got {len(paths)}")
    runs = []
    for path in paths:
        try:
            rows = json.loads(path.read_text())
            runs.append({name: {int(k): v for k, v in ks.items()} for name, ks in rows.items()})
        except (json.JSONDecodeError, AttributeError, ValueError) as error:
            raise ValueError(f"{path}: not a `cddae new-users --json` file ({error})") from None
    return runs


def build_parser() -> argparse.ArgumentParser:
    from training.names import KINDS, PRESETS, PROTOCOLS

    parser = argparse.ArgumentParser(prog="cddae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="fetch a MovieLens data set into a cache folder")
    fetch.add_argument(
        "dataset",
        choices=["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small"],
    )
    fetch.add_argument("--dest", type=Path, default=Path("data"), help="unpacked into DEST/NAME")
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="a folder of the data set's files (ml-1m and later: or GroupLens's zip) instead "
        "of downloading",
    )
    fetch.set_defaults(func=cmd_fetch)

    train = sub.add_parser("train", help="train and evaluate one model")
    train.add_argument("--model", choices=KINDS, required=True)
    train.add_argument("--data", type=Path, required=True, help="a folder in any supported layout")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", type=Path, help="JSON or TOML: model, train, protocol")
    train.add_argument(
        "--preset",
        choices=PRESETS,
        help="default (tuned), paper (Experiment 1) or untuned (the options' plain defaults)",
    )
    train.add_argument("--protocol", choices=PROTOCOLS)
    train.add_argument("--output", type=Path, help="checkpoint folder")
    train.add_argument("--json", type=Path, help="write the results as JSON")
    train.add_argument("--train-file", type=Path, help="interactions CSV replacing the split")
    train.add_argument("--test-file", type=Path)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="where the autoencoders train"
    )
    train.add_argument(
        "--eval-users", type=_eval_users, default=None, metavar="N|all",
        help="evaluate a seeded random sample of N test users, with 95%% intervals, or all; "
        "default: all up to 100,000, a sample of 100,000 above",
    )  # fmt: skip
    train.add_argument(
        "--no-final-fit",
        action="store_true",
        help="evaluate only: skip fitting the served model on all data",
    )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--test-file", type=Path)
    evaluate.add_argument("--json", type=Path)
    evaluate.add_argument("--eval-users", type=_eval_users, default=None, metavar="N|all",
                          help="as for train: all up to 100,000, a sample above")  # fmt: skip
    evaluate.add_argument("--seed", type=int, default=0, help="the sample's seed")
    evaluate.set_defaults(func=cmd_evaluate)

    recommend = sub.add_parser("recommend", help="top-N lists of every training user as TSV")
    recommend.add_argument("--checkpoint", type=Path, required=True)
    recommend.add_argument("--n", type=int, default=10)
    recommend.add_argument("--output", type=Path, required=True)
    recommend.set_defaults(func=cmd_recommend)

    export = sub.add_parser("export", help="export a checkpoint to ONNX as a model bundle")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--models-dir", type=Path, default=Path("models"))
    export.add_argument("--promote", action="store_true", help="put the new version in service")
    export.add_argument(
        "--force", action="store_true", help="with --promote: even if older than the last trim"
    )
    export.set_defaults(func=cmd_export)

    models = sub.add_parser(
        "models",
        help="list, promote, roll back, clean up model versions; experiments between two",
        epilog="experiments: `models experiment start VERSION --share 0.2 [--shadow]`, "
        "`models experiment status`, `models experiment stop [--promote]`",
    )
    models.add_argument("action", choices=["list", "promote", "rollback", "gc", "experiment"])
    models.add_argument(
        "words", nargs="*", metavar="ARG",
        help="promote: VERSION; experiment: start VERSION | status | stop",
    )  # fmt: skip
    models.add_argument("--share", type=float, default=0.2, help="experiment start: of users")
    models.add_argument(
        "--shadow", action="store_true",
        help="experiment start: the candidate scores its share on the side, never served",
    )  # fmt: skip
    models.add_argument(
        "--promote", action="store_true", help="experiment stop: put the candidate in service"
    )
    models.add_argument(
        "--force",
        action="store_true",
        help="promote (or roll back to) a version older than the last trim",
    )
    models.add_argument("--models-dir", type=Path, default=Path("models"))
    models.add_argument("--keep", type=int, default=3, help="with gc: newest versions to keep")
    models.set_defaults(func=cmd_models)

    report = sub.add_parser("report", help="reports: online rates per version")
    report.add_argument("kind", choices=["online"])
    report.add_argument("--models-dir", type=Path, default=Path("models"))
    report.add_argument("--since", help="ISO time (UTC unless given): lists from then on")
    report.add_argument(
        "--hours", type=_positive_int, default=1, help="the plot's time bucket, in hours"
    )
    report.add_argument("--plot", type=Path, default=Path("reports/online.png"))
    report.add_argument("--json", type=Path, help="write the table as JSON here")
    report.set_defaults(func=cmd_report)

    serve = sub.add_parser("serve", help="serve recommendations over HTTP (uvicorn)")
    serve.add_argument("--models-dir", type=Path, default=Path("models"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    retrain = sub.add_parser("retrain", help="batch job: retrain with recorded events, promote")
    retrain.add_argument("--data", type=Path, required=True, help="the base data set")
    retrain.add_argument("--models-dir", type=Path, default=Path("models"))
    retrain.add_argument("--model", choices=KINDS, default="cddae")
    retrain.add_argument("--events", type=Path, help="the file store (default: as the service)")
    retrain.add_argument("--redis-url", help="read the Redis stream (default: CDDAE_REDIS_URL)")
    retrain.add_argument("--gate", type=float, default=0.9,
                         help="promote only if P@10 ≥ gate × the version in service, "
                              "both scored on this run's holdout")  # fmt: skip
    retrain.add_argument("--seed", type=int, default=0)
    retrain.add_argument("--config", type=Path)
    retrain.add_argument("--output", type=Path, help="also keep the checkpoint here")
    retrain.add_argument(
        "--trim",
        action="store_true",
        help="after a promotion, trim the Redis stream up to the oldest mark still on disk",
    )
    retrain.add_argument(
        "--new-store",
        action="store_true",
        help="the version in service folded another store's events: fold this one from its start",
    )
    retrain.add_argument(
        "--nproc",
        type=_processes,
        default=1,
        help="train in N processes on this machine under torchrun (DistributedDataParallel)",
    )
    retrain.set_defaults(func=cmd_retrain)

    new_users = sub.add_parser(
        "new-users", help="user-disjoint protocol: held-out users asked for as ad-hoc users"
    )
    new_users.add_argument("--data", type=Path, required=True)
    new_users.add_argument("--models", default="cddae,ease,edlae,itemknn")
    new_users.add_argument("--seed", type=int, default=0)
    new_users.add_argument("--fraction", type=float, default=0.2)
    new_users.add_argument("--config", type=Path, help='{"cddae": {"model": {...}}, ...}')
    new_users.add_argument("--json", type=Path)
    new_users.set_defaults(func=cmd_new_users)

    cold = sub.add_parser(
        "cold-items", help="item-disjoint protocol: held-out items put back through the head"
    )
    cold.add_argument("--data", type=Path, required=True)
    cold.add_argument("--seeds", type=int, default=3, help="split seeds 0..N-1")
    cold.add_argument("--output", type=Path, default=Path("docs/cold_items"))
    cold.set_defaults(func=cmd_cold_items)

    similar = sub.add_parser(
        "similar-items", help="co-occurrence lift of similar-item lists against popularity"
    )
    similar.add_argument("--data", type=Path, required=True)
    similar.add_argument("--anchor-items", type=int, default=40, help="the most popular items")
    similar.add_argument("--seed", type=int, default=0)
    similar.add_argument(
        "--checkpoint", type=Path, help="a `cddae train` checkpoint instead of training one"
    )
    similar.add_argument("--json", type=Path)
    similar.set_defaults(func=cmd_similar_items)

    tune_ = sub.add_parser("tune", help="equal-budget random search on validation NDCG@10")
    tune_.add_argument("--data", type=Path, required=True)
    tune_.add_argument("--models", default="ease,edlae,itemknn,dae,cdae,cddae")
    tune_.add_argument("--budget", type=int, default=8, help="trials per model")
    tune_.add_argument("--seed", type=int, default=100, help="the tuning split (not reported)")
    tune_.add_argument(
        "--protocol",
        choices=["random", "temporal"],
        default="random",
        help="the tuning split's kind (temporal: validation is each user's latest)",
    )
    tune_.add_argument(
        "--settings",
        type=Path,
        help='JSON list of settings to score instead of draws: [{"model": {...}}]',
    )
    tune_.add_argument("--json", type=Path)
    tune_.set_defaults(func=cmd_tune)

    experiments = sub.add_parser("experiments", help="reproduce the paper's experiments")
    experiments.add_argument("suite", choices=["paper"])
    experiments.add_argument("--data", type=Path, required=True)
    experiments.add_argument("--seeds", type=int, help="split seeds (default 5, --quick 2)")
    experiments.add_argument("--output", type=Path, default=Path("reports/paper"))
    experiments.add_argument("--quick", action="store_true", help="fewer settings and seeds")
    experiments.add_argument("--epochs", type=int, help="cap on training epochs per run")
    experiments.add_argument("--workers", type=int, default=2, help="parallel runs")
    experiments.add_argument(
        "--no-new-users", action="store_true", help="skip the user-disjoint (new users) section"
    )
    experiments.add_argument(
        "--new-users-json",
        type=Path,
        nargs="+",
        help="the new-users section from `cddae new-users --seed S --json F` runs of the same "
        "data and default settings, one file per seed in order, instead of running them again",
    )
    experiments.set_defaults(func=cmd_experiments)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "models" and args.action == "promote" and len(args.words) != 1:
        parser.error("models promote needs one VERSION")
    try:
        code = args.func(args) or 0  # a command returns nothing, or an exit code
    except (ValueError, OSError, RuntimeError) as error:  # OSError: a path one cannot use
        print(f"cddae: error: {error}", file=sys.stderr)
        code = 2
    if "torch.distributed" in sys.modules:  # a torchrun rank ends here (no-op otherwise)
        from training.models.distributed import leave

        return leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
