"""RowAdam: SparseAdam's update, with the lazy L2 on the touched rows."""

import pytest
import torch
from torch.nn import functional as F

from training.models.optimizers import RowAdam


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_row_adam_is_sparse_adam_with_the_penalty_on_the_touched_rows(l2: float) -> None:
    torch.manual_seed(0)
    start = torch.randn(50, 6)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    row_adam = RowAdam([ours], lr=0.01, weight_decay=l2)
    sparse_adam = torch.optim.SparseAdam([theirs], lr=0.01)
    target = torch.randn(6)
    for _ in range(5):
        rows = torch.randint(0, 50, (12,))  # repeats: gradients summed per row
        for weight, optimizer, penalised in ((ours, row_adam, False), (theirs, sparse_adam, True)):
            loss = (F.embedding(rows, weight, sparse=True) @ target).pow(2).sum()
            if penalised:
                touched = F.embedding(torch.unique(rows), weight, sparse=True)
                loss = loss + 0.5 * l2 * touched.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)
    untouched = (ours.detach() == start).all(dim=1)
    assert 0 < int(untouched.sum()) < 50  # rows no batch touched are left as they were
    with pytest.raises(RuntimeError, match="row-sparse"):
        dense = torch.nn.Parameter(torch.ones(3))
        dense.grad = torch.ones(3)
        RowAdam([dense]).step()
