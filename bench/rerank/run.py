"""bench/rerank: what the sidecar's `/v1/rerank` costs over sending the same pairs to Triton directly.

Side by side in one run, on the same tritonserver, at 1 and 16 closed-loop clients, each request one query
and 32 documents (the model's default max_batch_size, so one Triton request either way):

- direct: one gRPC request with `QUERY` and `TEXT` of 32 items each (grpc.aio on Triton's stubs, the call
  the sidecar itself makes);
- rerank: `POST /v1/rerank` with the query and 32 documents through the sidecar process (aiohttp,
  HTTP/1.1 keep-alive), which tokenises nothing, calls Triton and sorts the scores.

The model is a small random-weight BERT cross-encoder (2 layers, hidden 128, one logit, a WordPiece vocabulary
trained on the workload): the route's own cost is a large share of each request. The ratio is rerank / direct
throughput; the target is >= 0.9 at 16 clients. Contenders alternate within each level (bench/openai's
`measure`), so drifting load on the shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.checkpoints import make_tiny_bert_classifier
from bench.common.loadgen import PooledHttpSender
from bench.common.sentences import load_texts
from bench.generation.run import NEVER_WAIT, measurement_fields, report_head
from bench.openai.run import (
    Settings,
    against_direct_cells,
    against_direct_headers,
    against_direct_markdown,
    finish,
    measure,
    serving,
    throughput_ratio,
)
from model_repo.triton_args import DEFAULT_CPU_WAIT_POLICY

DIRECT, RERANK = "direct gRPC", "/v1/rerank"
DOCUMENTS = 32


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.rerank", description=__doc__)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per level, contenders alternating")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modeldeploy-bench-rerank"))
    parser.add_argument("--name", default="rerank-cpu")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or READMEs")
    args = parser.parse_args(argv)
    return Settings(
        layers=0,
        hidden=0,
        max_tokens=0,
        min_prompt=0,
        max_prompt=0,
        **measurement_fields(args),
        # As bench/openai: on the CPU, never waits for a quiet machine nor repeats (other CPU is reported).
        device="cpu",
        quiet=NEVER_WAIT,
        shared_prefix=0,
        cpu_wait_policy=DEFAULT_CPU_WAIT_POLICY.value,
        whole_answers=(),
        spread_answer_tokens=None,
        repeats=args.repeats,
    )


def make_cross_encoder(directory: Path) -> Path:
    """bench's tiny random BERT (WordPiece trained on the workload, 2 layers, hidden 128) with one logit.

    Small on purpose: the route's own cost (HTTP, JSON, sorting) is then a large share of a request, so
    the ratio is the route's worst case. A MiniLM-sized cross-encoder takes seconds per 32 pairs on this
    2-core machine, where the route's cost would vanish in the noise.
    """
    from transformers import AutoModelForSequenceClassification

    make_tiny_bert_classifier(directory, hidden_size=128, layers=2)
    auto_class: Any = AutoModelForSequenceClassification
    model: Any = auto_class.from_pretrained(str(directory), num_labels=1, ignore_mismatched_sizes=True)
    model.eval().save_pretrained(str(directory))
    return directory


def documents_for(texts: Sequence[str]) -> dict[str, list[str]]:
    """Each query's 32 documents: the texts that follow it in the workload (a fixed, varied mix)."""
    return {
        query: [texts[(index + offset) % len(texts)] for offset in range(1, DOCUMENTS + 1)]
        for index, query in enumerate(texts)
    }


class DirectPairs:
    def __init__(self, grpc_url: str, model: str, documents: dict[str, list[str]]) -> None:
        from model_repo.openai_frontend.backend import TritonBackend

        self.backend, self.model, self.documents = TritonBackend(grpc_url), model, documents

    async def __call__(self, query: str) -> None:
        texts = self.documents[query]
        inputs = {"QUERY": [query] * len(texts), "TEXT": texts}
        scores = (await self.backend.infer_texts(self.model, inputs, ["SCORE"]))["SCORE"]
        np.argsort(-scores.reshape(-1))  # what a caller of Triton does with them: rank
        if scores.size != len(texts):
            raise RuntimeError(f"{scores.size} scores for {len(texts)} documents")

    async def close(self) -> None:
        await self.backend.close()


class RerankRoute(PooledHttpSender):
    def __init__(self, base_url: str, model: str, documents: dict[str, list[str]]) -> None:
        super().__init__(connections=256)
        self.url, self.model, self.documents = base_url + "/rerank", model, documents

    async def __call__(self, query: str) -> None:
        await self.post_json(
            self.url, {"model": self.model, "query": query, "documents": self.documents[query]}
        )


def render_markdown(report: dict[str, Any]) -> str:
    levels = report["levels"]
    rows = []
    for direct, rerank in zip(levels[DIRECT], levels[RERANK], strict=True):
        clients = direct["concurrency"]
        rows.append([str(clients), *against_direct_cells(direct, rerank, report["ratios"][str(clients)])])
    measured = f"{report['model']}; each request 1 query x {DOCUMENTS} documents."
    return against_direct_markdown(
        report, measured, ["clients", *against_direct_headers("rerank", "/v1/rerank")], rows
    )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions, Task

    settings = parse_args(argv)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    checkpoint = make_cross_encoder(settings.workdir / "cross-encoder")
    built = build_repository(
        BuildOptions(source=f"file://{checkpoint}", model_name="ranker", task=Task.TEXT_RANKING),
        settings.workdir / "ranker-repository",
        force=True,
    )
    texts = list(load_texts())
    documents = documents_for(texts)
    with serving(built.path, "ranker", settings.workdir) as (grpc_url, base_url):
        contenders: dict[str, Callable[[list[int]], Any]] = {
            DIRECT: lambda _tokens: DirectPairs(grpc_url, "ranker", documents),
            RERANK: lambda _tokens: RerankRoute(base_url, "ranker", documents),
        }
        levels = measure("rerank", contenders, texts, settings)
    report: dict[str, Any] = {
        **report_head("bench.rerank", argv, settings),
        "model": "random-weight BERT cross-encoder (2 layers, hidden 128, one logit, workload WordPiece)",
        "levels": levels,
        "ratios": {
            str(direct["concurrency"]): throughput_ratio(direct, rerank)
            for direct, rerank in zip(levels[DIRECT], levels[RERANK], strict=True)
        },
    }
    return finish(report, settings, started, render_markdown)
