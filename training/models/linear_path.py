"""A full-rank linear path beside the autoencoder's nonlinear one (after VASP, Vančura & Kordík
2021): the item logits become `out(hidden) + scale · x B`.

B is EASE's closed form (items × items, zero diagonal: an item never recommends itself) on the
data the network was fit on; `scale` is chosen on validation from `SCALES` after the network's
own early stopping, 0 included, so validation may also say "the network alone". EASE is the
strongest model on MovieLens-sized catalogues and the network learns what it cannot — the
profiles and non-additive tastes — so the sum ranks better than either (docs/MODELS.md).
Trained jointly instead (B fine-tuned or frozen, the scale learned) the network learned to
undo the linear path and the sum fell below EASE alone; that design was measured and dropped.

B is dense, so the path exists only where it fits: `linear_path: auto` turns it on up to
`AUTO_MAX_ITEMS`, for the full item loss, under the item-item memory limit, and off otherwise;
the checkpoint says which. In the exported graph it is a scatter of the history into a dense
row and one MatMul with B.

A new item has no column in B: its score is the cold-item head's row alone. The head is
trained on the network alone (the network is fit before the path exists, so the head is the
same as without one); in served lists the new items then compete with warm items that also
carry the linear path's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch._guards import detect_fake_mode
from torch.nn import functional as F

from training.models.baselines import check_item_item, ease_weights

LinearMode = Literal["off", "ease", "auto"]
# The scales validation chooses from (0: the network alone; 500: EASE all but alone).
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 100.0, 200.0, 500.0)
# `auto` stops here: the path costs items² multiply-adds per served user (16M at 4,000 items,
# a few milliseconds on one core; 30 ms at 10,000), whatever the history. ml-1m's 3,706 items
# get it; larger catalogues get it only when asked for (`linear_path: ease`).
AUTO_MAX_ITEMS = 4_000
# Memory while fitting: EASE's closed form peaks at about 4.1 float64 copies of items × items
# (measured), and the refit's B is built while the first one is still held.
COPIES = 5
# Without validation data (a fit told its epochs) and no scale given: the random tuning split's
# choice (docs/MODELS.md).
DEFAULT_SCALE = 10.0


def resolve(mode: LinearMode, n_items: int, sampled: bool) -> tuple[bool, str]:
    """(whether the path is built, why) for a fit on `n_items` items. `ease` asked outright
    refuses what it cannot do; `auto` says why it is off."""
    if mode == "off":
        return False, "off"
    if mode == "auto" and n_items > AUTO_MAX_ITEMS:
        return False, f"off: {n_items:,} items > {AUTO_MAX_ITEMS:,} (items² per served user)"
    if sampled:
        if mode == "ease":
            raise ValueError(
                "model.linear_path 'ease' needs the full item loss (train.negatives 0): a "
                "sampled loss is for catalogues an items × items matrix does not fit"
            )
        return False, "off: sampled item loss (catalogue too large for items × items)"
    try:
        check_item_item("the linear path", n_items, copies=COPIES, itemsize=8)
    except ValueError as error:
        if mode == "ease":
            raise
        return False, f"off: {error}"
    return True, f"ease ({n_items:,} × {n_items:,})"


def binarised(train: sp.csr_matrix) -> sp.csr_matrix:
    """A float32 copy of `train` with every stored entry 1: what the item-item paths are fit on."""
    x = train.astype(np.float32)
    x.data[:] = 1.0
    return x


def ease_start(train: sp.csr_matrix, lam: float) -> torch.Tensor:
    """B: EASE's closed form on the binarised training positives."""
    return torch.from_numpy(ease_weights(binarised(train), lam))


def cond(
    pred: torch.Tensor,
    true_fn: Callable[..., object],
    false_fn: Callable[..., object],
    operands: Sequence[torch.Tensor],
):
    """`torch.cond` while traced (the export writes an ONNX `If`), a plain Python branch when run
    eagerly (training, export parity). Eager `torch.cond` compiles its branches through dynamo,
    whose cache is one per process for every call: once calls of other shapes had made it trace
    with symbolic sizes, it refused branches whose output strides it could not prove equal, and
    a process that exported two models of different sizes (a retraining run, the test suite)
    failed its parity check.

    "Traced" is this call's own state — dynamo tracing it, or the exporter's fake tensors among
    its operands — not `torch.compiler.is_compiling()` alone: that flag is the process's, so while
    one thread exports, another thread's eager calls would take `torch.cond` (an outside attack
    made both fail)."""
    operands = tuple(operands)
    if torch.compiler.is_dynamo_compiling() or (
        torch.compiler.is_compiling() and detect_fake_mode(operands) is not None
    ):
        return torch.cond(pred, true_fn, false_fn, operands)
    return (true_fn if bool(pred) else false_fn)(*operands)


def weighted_rows(table: torch.Tensor, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_j weights[b, j] · table[items[b, j]] for a padded batch (batch × length; padding has
    weight 0): an ONNX Gather and one batched MatMul. The product-then-sum form exported as
    GatherND, Mul and ReduceSum and materialised batch × length × width twice: the whole
    graph took 0.41 ms for one user with 100 entries at ml-100k against 0.22 with this form
    (scripts/bench_graph_shapes.py, docs/PERFORMANCE.md)."""
    return torch.matmul(weights.unsqueeze(1), F.embedding(items, table)).squeeze(1)


class LinearPath(nn.Module):
    """scale · x B for a bag or a padded batch; fixed weights (buffers), never trained."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weight", weight.clone().fill_diagonal_(0.0))
        self.register_buffer("scale", torch.tensor(float(scale)))
        # An attribute, not a global read in forward: the exported graph bakes it in, and the
        # reuse of traced graphs (training/jobs/onnx_graph.py) sees only the module's own.
        self.gathered_max = GATHERED_MAX

    def bag(self, items: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor):
        summed = F.embedding_bag(items, self.weight, offsets, mode="sum",
                                 per_sample_weights=weights)  # fmt: skip
        return self.scale * summed

    def gathered(self, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """A padded batch's rows gathered and summed, always: for inputs known to be narrow (the
        short head's first places), where `padded`'s choice has nothing to choose."""
        return self.scale * weighted_rows(self.weight, items, weights)

    def padded(self, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The exported graph's form, chosen per call (an ONNX `If`): B's rows gathered and
        summed while that holds at most `gathered_max` floats (batch × length × items; the
        gathered rows and their weighted copy: twice that at the peak) and the batch's entries
        are at most an eighth of the items — a typical user reads length rows of B, not all of
        it — else the history scattered into a dense row and one MatMul with B, whose memory is
        batch × items whatever the length (a 10,000-item POST /score at 10,000 items would have
        gathered 400 MB) but which reads all of B (11 MB at ml-100k: about a millisecond per
        call, even for three items). Past an eighth, gathering costs about what the MatMul
        does (measured at ml-100k: 100 entries gathered 0.45 ms, the MatMul 1.3 ms)."""
        n = self.weight.shape[0]
        limit = min(self.gathered_max, n * n // 8)  # floats: memory, and entries ≤ items / 8

        def gathered(items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return weighted_rows(self.weight, items, weights)

        def dense(items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            rows = weights.new_zeros((items.shape[0], n))
            return rows.scatter_add(1, items, weights) @ self.weight

        small = items.numel() * n <= limit
        return self.scale * cond(small, gathered, dense, (items, weights))


# The gathered form's bound, in floats (4 MB): above it the dense form (LinearPath.padded).
GATHERED_MAX = 1 << 20


def choose_scale(
    path: LinearPath, judge: Callable[[], float], scales: tuple[float, ...] = SCALES
) -> tuple[float, dict[str, float]]:
    """The scale with the best `judge()` (the validation metric of the model with the path at
    that scale; ties: the smaller scale), and every scale's figure. Leaves the path at it."""
    figures: dict[str, float] = {}
    for scale in scales:
        path.scale.fill_(scale)
        figures[f"{scale:g}"] = judge()
    best = max(scales, key=lambda s: (figures[f"{s:g}"], -s))
    path.scale.fill_(best)
    return best, figures
