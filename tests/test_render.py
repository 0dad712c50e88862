"""An answer's bytes: item templates filled in one formatting call, whatever `%`s the ids and
titles hold; one user's graph input built straight as the padded form builds it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.serving.onnx_model import (
    Model,
    Query,
    Ranked,
    finish,
    item_tail,
    item_template,
    render,
)

NASTY = ["%", "%s", "%.6f", "%%", "100% pure", '"%d"\\', "é%", "plain"]


def test_render_fills_each_score_once_whatever_the_items_hold() -> None:
    ids = [f"id{k}{text}" for k, text in enumerate(NASTY)]
    templates = [
        item_template(item, item_tail(f"title {text}", [text, "Drama"], "model"))
        for item, text in zip(ids, NASTY, strict=True)
    ]
    order = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    scores = np.array([2.5, 1.0000004, 0.1234565, -3.0, 0.0, 1e-9, -1e-7, -5.25])
    answer = render(templates, b'"v1"', Ranked(order, scores, "model"), ["x%s"])
    body = json.loads(finish(answer, cached=False))
    assert [item["item_id"] for item in body["items"]] == [ids[k] for k in order]
    assert [item["title"] for item in body["items"]] == [f"title {NASTY[k]}" for k in order]
    assert [item["genres"][0] for item in body["items"]] == [NASTY[k] for k in order]
    assert [item["score"] for item in body["items"]] == [float(f"{s:.6f}") for s in scores]
    assert body["unknown_items"] == ["x%s"] and body["model_version"] == "v1"


def test_render_of_no_items_and_of_scores_that_are_not_finite() -> None:
    templates = [item_template("a", item_tail("A", [], "model"))]
    empty = json.loads(
        finish(render(templates, b'"v"', Ranked(np.zeros(0, int), np.zeros(0), "model")), True)
    )
    assert empty["items"] == []
    bad = render(templates, b'"v"', Ranked(np.array([0]), np.array([np.nan]), "model"))
    assert json.loads(finish(bad, False))["items"][0]["score"] == 0.0


@pytest.mark.parametrize(
    "weights",
    [{5: 1.0}, {0: 1.0, 9: 0.5, 3: 2.0}, {7: 1e-46, 2: 1.0}, {np.int64(4): np.float32(0.3)}],
)
def test_one_users_feed_is_the_padded_feed(weights: dict) -> None:
    features = np.array([0.5, -1.0, 3.0], dtype=np.float64)
    query = Query(weights, features, user_index=11)
    one, padded = Model._one_feed(query), Model._padded_feeds([query])
    assert one.keys() == padded.keys()
    for name, value in padded.items():
        assert one[name].dtype == value.dtype and one[name].shape == value.shape, name
        np.testing.assert_array_equal(one[name], value, err_msg=name)
