"""A catalogue view built from the previous one (reusing the rows of items that did not change)
is the view built from nothing, whatever the writes between them: items created, re-described
(new ones and the model's own), hidden and shown again, and a store that lost its profiles."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from service.bundle import current_version
from service.serving.catalogue import CatalogueView
from service.serving.onnx_model import Model
from service.state.store import Catalogue

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def _same(a: CatalogueView, b: CatalogueView) -> None:
    assert a.new_ids == b.new_ids and a.n_items == b.n_items
    assert a.templates == b.templates
    for name in ("available", "blocked", "popularity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.cold_vectors is None) == (b.cold_vectors is None)
    if a.cold_vectors is not None:
        # exactly: rows made in batches of whatever changed equal rows made all at once (in
        # float32 they did not, and two items of one profile tied differently per process)
        np.testing.assert_array_equal(a.cold_vectors, b.cold_vectors)
        np.testing.assert_array_equal(a.cold_bias, b.cold_bias)
    assert a.labels.keys() == b.labels.keys() and a.numbers.keys() == b.numbers.keys()
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name], err_msg=name)
    for name in a.numbers:
        np.testing.assert_array_equal(a.numbers[name], b.numbers[name], err_msg=name)


def _profile(rng: random.Random) -> dict:
    profile: dict = {"title": f"Film {rng.randrange(10**6)}"}
    if rng.random() < 0.8:
        profile["genres"] = rng.sample(GENRES, rng.randrange(0, 3))
    if rng.random() < 0.7:
        profile["year"] = rng.randrange(1950, 2030)
    return profile


def test_a_view_from_the_previous_one_equals_one_from_nothing(two_small_bundles: Path) -> None:
    model = Model.load(two_small_bundles / current_version(two_small_bundles))
    assert model.cold_output is not None  # the head's rows are part of what is compared
    known = [str(i) for i in model.bundle.item_ids]
    rng = random.Random(0)
    profiles: dict[str, dict] = {}
    hidden: set[str] = set()
    view = CatalogueView(model, Catalogue(0, {}, set(), set()), None)
    for step in range(1, 120):
        action = rng.random()
        if action < 0.35:  # create
            profiles[f"new-{rng.randrange(60)}"] = _profile(rng)
        elif action < 0.55 and profiles:  # re-describe an item created before
            profiles[rng.choice(sorted(profiles))] = _profile(rng)
        elif action < 0.7:  # re-describe one of the model's own
            profiles[rng.choice(known)] = _profile(rng)
        elif action < 0.95:  # hide or show again, any item
            item = rng.choice([*known[:20], *sorted(profiles)])
            hidden.symmetric_difference_update({item})
        elif step > 60:  # the store lost everything (flushed): nothing of the last view holds
            profiles, hidden = {}, set()
        catalogue = Catalogue(step, dict(profiles), set(hidden), set())
        view = CatalogueView(model, catalogue, view)
        _same(view, CatalogueView(model, catalogue, None))
