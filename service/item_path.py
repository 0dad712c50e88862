"""The cold-item path: how an item the model never trained on gets output weights from its
profile. Shared by training (which learns the head and checks it) and the service (which runs
it for items created through the API). Standard library and numpy only.

The head is a small MLP stored in the bundle's arrays as `cold_w0, cold_b0, cold_w1, …`
(weights `in × out`, ReLU between layers, none after the last). Its input is the item's encoded
profile (the bundle's item spec); its output is `width + 1` numbers: the item's output-layer
row (a vector beside the model's learnt ones, `item_vectors`) and its bias. A user's score for
the item is then `activation(hidden · vector + bias)`, where `hidden` is the graph's second
output, and for a softmax model the activation divides by the graph's `log_norm` output
(the log of the sum over the trained catalogue): the new item's probability on the same scale
as the others', so it ranks among them as any item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COLD_PREFIX = ("cold_w", "cold_b")


def cold_layers(arrays: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head's layers from a bundle's arrays, in order; [] when the bundle has none."""
    layers = []
    while f"cold_w{len(layers)}" in arrays:
        k = len(layers)
        layers.append((arrays[f"cold_w{k}"].astype(np.float32), arrays[f"cold_b{k}"]))
    return layers


def layer_arrays(layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The inverse of `cold_layers`: what the exporter writes."""
    out: dict[str, np.ndarray] = {}
    for k, (weight, bias) in enumerate(layers):
        out[f"cold_w{k}"] = np.ascontiguousarray(weight, dtype=np.float32)
        out[f"cold_b{k}"] = np.ascontiguousarray(bias, dtype=np.float32)
    return out


def cold_weights(
    layers: Sequence[tuple[np.ndarray, np.ndarray]], features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors items × width, biases items) for encoded item profiles (items × features).
    Computed in float64 and rounded to float32: an item's row is then the same whichever items
    it is computed with (in float32 BLAS rounds per batch, and two items with one profile made
    in two batches tied differently in two processes)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    for k, (weight, bias) in enumerate(layers):
        x = x @ weight.astype(np.float64) + bias
        if k < len(layers) - 1:
            x = np.maximum(x, 0.0)
    x = x.astype(np.float32)
    return np.ascontiguousarray(x[:, :-1]), np.ascontiguousarray(x[:, -1])


def item_scores(
    hidden: np.ndarray,
    log_norm: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    output: str,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Scores (users × items) of items given by output weights, on the graph's scale; `offset`
    (users × items) adds logits from elsewhere (a catalogue item's linear path: a new item has
    none)."""
    logits = hidden @ vectors.T + biases
    if offset is not None:
        logits = logits + offset
    if output == "softmax":
        return np.exp(np.minimum(logits - log_norm.reshape(-1, 1), 0.0))
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
