"""The frontend's JSON bodies (model_repo/openai_frontend/json_body.py): orjson, numpy arrays written as
the same float32 values, non-finite floats as null."""

from __future__ import annotations

import json

import numpy as np

from model_repo.openai_frontend.json_body import JSONAnswer, dumps


def test_float32_rows_read_back_as_the_same_float32_values() -> None:
    rows = np.random.default_rng(0).standard_normal((8, 384)).astype(np.float32)
    rows[0, :4] = [0.1, 1e-8, -3.25, np.float32(1) / 3]
    body = json.loads(dumps({"data": [{"embedding": row} for row in rows]}))
    back = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    np.testing.assert_array_equal(back, rows)
    # The shortest text for each float32, not its float64 expansion (0.10000000149011612).
    assert b"0.1," in dumps(rows[0][:2])


def test_non_finite_floats_are_null_and_the_rest_is_plain_json() -> None:
    content = {"logprob": float("-inf"), "nan": float("nan"), "pair": (1, 2), "text": "é"}
    assert json.loads(dumps(content)) == {"logprob": None, "nan": None, "pair": [1, 2], "text": "é"}


def test_the_answer_carries_the_encoders_body_as_json() -> None:
    content = {"data": [np.array([0.5, 1.5], dtype=np.float32)], "usage": {"total_tokens": 3}}
    answer = JSONAnswer(content, status_code=201)
    assert answer.body == dumps(content)
    assert answer.status_code == 201
    assert answer.headers["content-type"] == "application/json"
