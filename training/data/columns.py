"""Interactions as columns, the shape every columnar reader (MovieLens, Parquet) hands to
`loaders`: ids as codes into vocabularies of unique strings, no Python object per row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CodedInteractions:
    """Ids as codes into sorted vocabularies (loaders.IdColumn's shape); `implicit`: no
    rating column was given (every row a positive)."""

    user_codes: np.ndarray
    user_vocab: np.ndarray
    item_codes: np.ndarray
    item_vocab: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    implicit: bool = False
