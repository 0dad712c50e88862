"""Item-kNN's fold-in beside the short head (issue 22, fourth lever: side information where
histories are short).

A new visitor's 1–5 items say little to an encoder trained mostly on long histories; item-kNN
folds them in directly, each item voting for its co-consumed neighbours, and on the user-disjoint
protocol it ranked 3–5 revealed items better than the short head alone (docs/MODELS.md). So a
history the short head serves gets `weight · x S` added to its item logits, S the items' cosine
similarity on the data the head was fit on (every neighbour kept: S is dense anyway, and no
cut was tuned). It is the linear path's arithmetic with another matrix (`LinearPath`): one
implementation of the bag, padded and exported forms. Longer histories never see it: known
users' scores are unchanged.

S is dense, items × items, so it exists only where the linear path's rule lets a dense matrix
be (`AUTO_MAX_ITEMS`, the item-item memory limit); past that the head serves alone and the
checkpoint says why.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch

from training.models.baselines import TooLarge, check_item_item, cosine_similarity
from training.models.linear_path import AUTO_MAX_ITEMS, GATHERED_MAX, binarised


def resolve(weight: float, n_items: int, short_max: int) -> tuple[bool, str]:
    """(whether the path is built, why) for a fit on `n_items` items whose short head serves
    histories of at most `short_max`: the graph gathers `short_max` rows of S for every user
    (batch × short_max × items floats), so that too is bounded, as the linear path's gathered
    form is."""
    if not weight:
        return False, "off"
    if n_items > AUTO_MAX_ITEMS:
        return False, f"off: {n_items:,} items > {AUTO_MAX_ITEMS:,} (a dense items × items matrix)"
    if short_max * n_items > GATHERED_MAX:
        return False, (
            f"off: short_history_max {short_max:,} × {n_items:,} items > {GATHERED_MAX:,} floats "
            "gathered per user"
        )
    try:
        check_item_item("the short head's neighbours", n_items, copies=3, itemsize=4)
    except TooLarge as error:
        return False, f"off: {error}"
    return True, note(n_items, weight)


def note(n_items: int, weight: float) -> str:
    """What a checkpoint's params say of a built path."""
    return f"item cosine ({n_items:,} × {n_items:,}), weight {weight:g}"


def similarities(train: sp.csr_matrix, shrink: float) -> torch.Tensor:
    """S, the cosine similarity of `train`'s binarised columns: the path is weight · x S."""
    return torch.from_numpy(cosine_similarity(binarised(train), shrink))
