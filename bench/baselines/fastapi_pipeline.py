"""Baseline (b): a FastAPI app served by uvicorn, calling a `transformers.pipeline` once per request.

The usual hand-written model server: one pipeline loaded at start-up, one POST per text, no batching.
Configured from the environment (BASELINE_MODEL, BASELINE_TASK, BASELINE_DEVICE, BASELINE_DTYPE) so
that `uvicorn bench.baselines.fastapi_pipeline:app` starts it. The endpoint is a plain `def`, which
FastAPI runs in its thread pool, the way most such servers are written.
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

TASK = os.environ.get("BASELINE_TASK", "text-classification")
predictor: Any = pipeline(
    cast(Any, TASK),
    model=os.environ["BASELINE_MODEL"],
    device=os.environ.get("BASELINE_DEVICE", "cpu"),
    dtype=getattr(torch, os.environ.get("BASELINE_DTYPE", "float32")),
)
app = FastAPI()


class PredictRequest(BaseModel):
    text: str


@app.post("/predict")
def predict(request: PredictRequest) -> dict[str, Any]:
    if TASK == "feature-extraction":
        states = predictor(request.text, return_tensors=True)[0].float()
        pooled = states.mean(dim=0)
        pooled = pooled / pooled.norm().clamp(min=1e-12)
        return {"embedding": pooled.cpu().tolist()}
    result = predictor(request.text)[0]
    return {"label": result["label"], "score": float(result["score"])}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
