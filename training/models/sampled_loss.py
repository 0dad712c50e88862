"""The item loss over a sample of the catalogue, for catalogues where a logit per item and user
in every batch is the cost of training (docs/SCALE.md, "The sampled loss").

The candidates of a batch are its users' positives and `negatives` items drawn uniformly, shared
by the batch. Two objectives have a sampled form:
- sigmoid + BCE: each drawn negative weighted to stand for the catalogue's unsampled ones;
- softmax + CCE (Mult-DAE/VAE's multinomial likelihood): the softmax's normaliser over the
  catalogue estimated from the candidates, each column that is not one of the user's own
  positives corrected by the log of its inclusion probability ("logQ": Bengio & Senécal 2008,
  Yi et al. 2019): Σ exp(logit − log π) over the candidates is a Horvitz–Thompson estimate of
  Σ exp(logit) over the catalogue. A column enters a batch through the draw or as another
  user's positive, so π_j = 1 − (1 − 1/items)^negatives · (1 − share_j)^(batch − 1), share_j the
  share of training users who have item j.

When the draw covers the catalogue (π = 1 everywhere), both equal the full loss exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F

# Past this many items the default (`train.negatives` unset) trains on the sampled loss with
# DEFAULT_NEGATIVES draws; at or below it, on the full loss. Measured (docs/SCALE.md, synthetic
# sets, two epochs): at 5,000 items the sampled softmax is as good and 15% faster, at 20,000
# better and 2.4× faster; ml-100k and ml-1m (1,682 and 3,706 items) keep the tuned full loss.
SAMPLED_ABOVE = 10_000
DEFAULT_NEGATIVES = 2_000
SAMPLED_OBJECTIVES = (("sigmoid", "bce"), ("softmax", "cce"))


def resolve_negatives(negatives: int | None, n_items: int, output: str, loss: str) -> int:
    """The draws a fit takes, 0 for the full loss. `None` is automatic: sampled past
    SAMPLED_ABOVE items for an objective that has a sampled form. A count at or above the
    catalogue size is the full loss (every item is a candidate anyway)."""
    if negatives is None:
        automatic = n_items > SAMPLED_ABOVE and (output, loss) in SAMPLED_OBJECTIVES
        return DEFAULT_NEGATIVES if automatic else 0
    check_objective(negatives, output, loss)
    return negatives if negatives < n_items else 0


def check_objective(negatives: int | None, output: str, loss: str) -> None:
    """Refuse `train.negatives` > 0 for an objective without a sampled form."""
    if negatives and (output, loss) not in SAMPLED_OBJECTIVES:
        raise ValueError(
            f"train.negatives {negatives}: a sampled loss needs output sigmoid and loss bce, or "
            f"softmax and cce; got {output} and {loss} (leave negatives unset or 0)"
        )


@dataclass(frozen=True)
class Sampling:
    """One fit's sampled loss: the draws per batch and each item's share of training users."""

    negatives: int
    item_share: torch.Tensor  # float32 (items,)

    @classmethod
    def of(cls, train: sp.csr_matrix, negatives: int, device: torch.device) -> Sampling:
        users = max(int(np.count_nonzero(np.diff(train.indptr))), 1)
        counts = np.bincount(train.indices, minlength=train.shape[1])
        share = torch.from_numpy((counts / users).astype(np.float32)).to(device)
        return cls(negatives, share.clamp(0.0, 1.0))

    @property
    def description(self) -> str:
        return f"{self.negatives:,} items drawn per batch beside its positives"


Logits = Callable[[torch.Tensor], torch.Tensor]  # candidate columns → batch × columns logits


def sampled_item_loss(
    logits_of: Logits,
    rows: torch.Tensor,
    items: torch.Tensor,
    weights: torch.Tensor,
    batch: int,
    sampling: Sampling,
    objective: tuple[str, str],
    emphasis: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The batch's item loss (summed over items, averaged over its `batch` users) over the
    candidates; `rows`, `items`, `weights` are the positives (the uncorrupted bag's entries)
    and `emphasis` an optional weight per positive."""
    n_items = len(sampling.item_share)
    drawn = torch.randint(0, n_items, (sampling.negatives,), generator=generator)
    columns, inverse = torch.unique(torch.cat([items, drawn.to(items.device)]), return_inverse=True)
    at = inverse[: len(items)]  # each positive's column
    logits = logits_of(columns)
    if objective == ("sigmoid", "bce"):
        target = torch.zeros_like(logits)
        target[rows, at] = 1.0
        positives = target.sum(dim=1, keepdim=True)
        # Each of a user's (columns − positives) negatives stands for (items − positives).
        scale = (n_items - positives) / (len(columns) - positives).clamp_min(1.0)
        cell_weights = torch.where(target > 0, torch.ones_like(target), scale.expand_as(target))
        if emphasis is not None:
            cell_weights[rows, at] = emphasis
        cells = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (cells * cell_weights).sum() / batch
    if objective != ("softmax", "cce"):
        raise ValueError(f"no sampled form of {objective[0]} + {objective[1]}")
    miss = sampling.negatives * np.log1p(-1.0 / n_items) + (batch - 1) * torch.log1p(
        -sampling.item_share[columns].clamp(max=1.0 - 1e-7)
    )
    log_inclusion = torch.log(-torch.expm1(miss))  # log π of each column
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[rows, at] = True  # a user's own positives are candidates surely: no correction
    corrected = torch.where(own, logits, logits - log_inclusion)
    log_normaliser = torch.logsumexp(corrected, dim=1)
    target = weights if emphasis is None else weights * emphasis
    return -(target * (logits[rows, at] - log_normaliser[rows])).sum() / batch
