"""ONNX export of trained models: parity with PyTorch, the bundle, the unseen-user path."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.bundle import load_bundle
from training.data.prepared import ProtocolConfig, prepare
from training.jobs.export import export_checkpoint
from training.jobs.pipeline import train_and_evaluate

FAST = {"epochs": 5, "patience": 5, "batch_size": 16}


VARIATIONAL = {
    "hidden": [16],
    "code_width": 8,
    "beta": 0.2,
}  # Mult-VAE's code: the graph takes its mean


# RecVAE's recipe: a dense encoder (swish, LayerNorm) and its training options.
RECVAE = {"hidden": [16, 16, 16], "encoder": "dense", "code_width": 8, "beta": 0.2,
          "composite_prior": 0.75, "kl_by_history": True, "alternate": 1}  # fmt: skip


# The linear path (items × items beside the network) on a softmax model: one more Gather.
LINEAR = {"hidden": [16], "output": "softmax", "loss": "cce", "input_norm": True,
          "linear_path": "ease", "linear_scale": 5.0}  # fmt: skip


# The default model and the closed forms here; the other variants (a trace of their own each,
# ~20 s) run in the longer suite: tests/test_export_variants.py.
@pytest.mark.parametrize("kind", ["cddae", "ease", "edlae"])
def test_export_parity_and_bundle(synthetic_dir: Path, tmp_path: Path, kind: str) -> None:
    check_export(synthetic_dir, tmp_path, kind)


def check_export(synthetic_dir: Path, tmp_path: Path, kind: str) -> None:
    """Train `kind` briefly, export it: parity, the manifest, the served inputs, and the
    graph's dynamic batch, history length and padding."""
    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    neural = kind not in ("ease", "edlae")
    variants = {"-vae": VARIATIONAL, "-linear": LINEAR, "-recvae": RECVAE}
    model = next((v for k, v in variants.items() if kind.endswith(k)), {"hidden": [16]})
    linear = kind.endswith("-linear")
    kind = kind.removesuffix("-vae").removesuffix("-linear").removesuffix("-recvae")
    _, checkpoint = train_and_evaluate(
        kind, prepared, model=model if neural else None,
        train=FAST if neural else None, progress=False,
    )  # fmt: skip
    version, figures = export_checkpoint(checkpoint, tmp_path)
    assert figures["max_abs_diff"] <= 1e-4
    assert figures["top10_agreement"] >= 0.999

    loaded = load_bundle(tmp_path / version)
    assert loaded.manifest["model"]["kind"] == kind
    stated = loaded.manifest["model"]["params"].get("linear_path")
    if linear:  # the served model's linear path: EASE's weights beside it, at its scale
        items = prepared.dataset.n_items
        assert stated == f"ease ({items:,} × {items:,}), scale 5"
    elif kind == "cdae":  # CDDAE's default only
        assert stated == "off"
    assert loaded.manifest["parity"] == figures
    assert len(loaded.item_ids) == prepared.dataset.n_items
    # The served model's input is every positive; its exclusion list every interaction.
    np.testing.assert_array_equal(loaded.history(3), prepared.positives[3].indices)
    np.testing.assert_array_equal(loaded.seen(3), prepared.seen[3].indices)
    assert len(loaded.seen(3)) > len(loaded.history(3))  # low ratings are seen, not input
    assert loaded.manifest["served"]["fit_on"] == "all data"

    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    n_items, width = len(loaded.item_ids), loaded.user_spec.width
    # Batch and history length are dynamic; -1 marks users the model never saw.
    for batch, length in ((1, 1), (7, 1), (1, 9), (7, 9)):
        feeds = {
            "items": np.arange(batch * length).reshape(batch, length) % n_items,
            "weights": np.ones((batch, length), np.float32),
            "user_features": np.zeros((batch, width), np.float32),
            "user_index": np.full(batch, -1, np.int64),
        }
        scores = session.run(["scores"], feeds)[0]
        assert scores.shape == (batch, n_items) and np.isfinite(scores).all()
        # Padding (weight 0) changes nothing.
        padded = {**feeds, "items": np.pad(feeds["items"], ((0, 0), (0, 4)))}
        padded["weights"] = np.pad(feeds["weights"], ((0, 0), (0, 4)))
        np.testing.assert_allclose(session.run(["scores"], padded)[0], scores, atol=1e-6)


def test_weights_past_the_limit_travel_as_external_data(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    from service.serving.onnx_model import Model

    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    _, checkpoint = train_and_evaluate(  # the default test's structure: its trace is reused
        "cddae", prepared, model={"hidden": [16]}, train=FAST, progress=False
    )
    inline, _ = export_checkpoint(checkpoint, tmp_path)
    external, figures = export_checkpoint(checkpoint, tmp_path, external_above=0)
    folder = tmp_path / external
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    weights = {i.name: i for i in graph.graph.initializer if np.prod(i.dims) >= 16 * 16}
    assert weights and all(i.data_location == onnx.TensorProto.EXTERNAL for i in weights.values())
    assert (folder / "model.onnx.data").stat().st_size >= 4 * sum(
        int(np.prod(i.dims)) for i in weights.values()
    )
    assert "model.onnx.data" in load_bundle(folder).manifest["files"]  # checksummed
    assert figures["max_abs_diff"] <= 1e-4
    a, b = Model.load(tmp_path / inline), Model.load(folder)  # the service loads both
    queries = [a.known_user(u) for u in range(5)]
    np.testing.assert_allclose(a.scores(queries), b.scores(queries), atol=1e-6)
    (folder / "model.onnx.data").write_bytes(b"truncated")
    with pytest.raises(Exception, match=r"model\.onnx\.data: sha256"):
        Model.load(folder)


def _run(graph: dict[str, bytes], feeds: tuple, tmp: Path) -> np.ndarray:
    (tmp / "model.onnx").write_bytes(graph["model.onnx"])
    session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(["scores"], {n: t.numpy() for n, t in zip(names, feeds, strict=True)})[0]


def test_a_reused_graph_scores_with_its_own_weights(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fits of one structure: the second export reuses the first's trace, and answers as
    its own model does (PyTorch), not as the first model."""
    from training.jobs import onnx_graph
    from training.jobs.export import InferencePath, graph_of, model_inputs
    from training.jobs.pipeline import restore

    prepared = prepare(synthetic_dir, ProtocolConfig(seed=0))
    checkpoints = [
        train_and_evaluate(
            "cddae", prepared, model={"hidden": [16]}, train=FAST, progress=False, seed=seed
        )[1]
        for seed in (0, 1)
    ]
    modules = [InferencePath(restore(c, served=True), "cddae") for c in checkpoints]
    example, feeds = (
        model_inputs(checkpoints[0], np.arange(2)),
        model_inputs(checkpoints[1], np.arange(30)),
    )
    traced = onnx_graph._trace  # the default test's export may have traced this structure
    calls: list[int] = []
    monkeypatch.setattr(onnx_graph, "_trace", lambda *a: calls.append(1) or traced(*a))
    first = graph_of(modules[0], example)
    before = len(calls)
    reused = graph_of(modules[1], example)
    assert before <= 1 and len(calls) == before  # one structure, traced at most once
    with torch.no_grad():
        want = modules[1](*feeds)
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    got = _run(reused, feeds, tmp_path)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # the export's parity bound
    assert np.abs(_run(first, feeds, tmp_path) - want).max() > 1e-3  # the weights did differ


class _Scaled(torch.nn.Module):
    def __init__(self, factor: float, constant: torch.Tensor):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.factor, self.constant = factor, constant


def test_what_a_graph_bakes_in_changes_its_fingerprint() -> None:
    from training.jobs.onnx_graph import fingerprint

    example, dims = (torch.zeros(4, 3),), ({0: torch.export.Dim("batch")},)

    def key(module: torch.nn.Module, *, example: tuple = example) -> str:
        return fingerprint(module, example, ["x"], dims, ("y",))

    base = key(_Scaled(2.0, torch.ones(2)))
    assert key(_Scaled(2.0, torch.ones(2))) == base  # new weights, same structure
    assert key(_Scaled(3.0, torch.ones(2))) != base  # a number the forward may read
    assert key(_Scaled(2.0, torch.zeros(2))) != base  # a constant tensor, by content
    assert key(_Scaled(2.0, torch.ones(2)), example=(torch.zeros(4, 5),)) != base  # input width
    wider = _Scaled(2.0, torch.ones(2))
    wider.linear = torch.nn.Linear(3, 4)
    assert key(wider) != base  # a weight's shape
    # Found by an outside attack: what the forward may read beyond vars() and the state.
    buffered = [_Scaled(2.0, torch.ones(2)) for _ in range(2)]
    for module, value in zip(buffered, (0.0, 1.0), strict=True):
        module.register_buffer("offset", torch.full((2,), value), persistent=False)
    assert key(buffered[0]) != key(buffered[1])  # a non-persistent buffer, by content
    hooked = _Scaled(2.0, torch.ones(2))
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert key(hooked) is None  # never reused
    closure = _Scaled(2.0, torch.ones(2))
    closure.factor = lambda x: x  # known only by its address, which CPython reuses
    assert key(closure) is None
    long = [_Scaled(2.0, torch.ones(2)) for _ in range(2)]
    for module, last in zip(long, (0.0, 1.0), strict=True):
        values = np.zeros(5000)
        values[-1] = last
        module.factor = {"table": values}  # a repr would elide the difference
    assert key(long[0]) != key(long[1])
    bf16 = _Scaled(2.0, torch.ones(2, dtype=torch.bfloat16))
    assert key(bf16) != base


def test_a_class_setting_read_in_forward_is_part_of_the_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training.jobs.onnx_graph import fingerprint

    example, dims = (torch.zeros(4, 3),), ({0: torch.export.Dim("batch")},)
    before = fingerprint(_Scaled(2.0, torch.ones(2)), example, ["x"], dims, ("y",))
    monkeypatch.setattr(_Scaled, "mode", "dense", raising=False)
    assert fingerprint(_Scaled(2.0, torch.ones(2)), example, ["x"], dims, ("y",)) != before
