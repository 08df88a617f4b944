"""What one Python-backend stub serving several models would cost per model, measured in one process
that does what a stub does (import torch and transformers, load each model with the runtime's loader
settings) — not through Triton: no such shared stub exists yet (docs/packing.md).

    .venv/bin/python -m bench.packing.shared_stub --models 8
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common.checkpoints import make_tiny_bert_classifier
from bench.common.machine import load_average


def _rss_pss_kib() -> tuple[int, int]:
    rss = pss = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_bert_classifier(Path(tmp) / "c", hidden_size=256, layers=4).path
        gc.collect()
        import torch
        import transformers

        torch.set_num_threads(1)
        steps: list[dict[str, Any]] = [
            {"step": "torch + transformers imported", "rss_pss_kib": _rss_pss_kib()}
        ]
        models = []
        for index in range(args.models):
            model = transformers.AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
            with torch.inference_mode():
                model(**tokenizer(["warm up"] * 16, return_tensors="pt", padding=True))
            models.append((model, tokenizer))
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            steps.append(
                {"step": f"model {index + 1} loaded", "rss_pss_kib": _rss_pss_kib(), "weights_bytes": weights}
            )
    base = steps[0]["rss_pss_kib"][0]
    per_model = [(b["rss_pss_kib"][0] - a["rss_pss_kib"][0]) for a, b in itertools.pairwise(steps[1:])]
    print(json.dumps({"steps": steps, "load_average": load_average()}, indent=2))
    print(
        f"process with torch+transformers: {base / 1024:.0f} MiB RSS; first model +"
        f"{(steps[1]['rss_pss_kib'][0] - base) / 1024:.0f} MiB; each further model +"
        f"{sum(per_model) / max(1, len(per_model)) / 1024:.1f} MiB on average "
        f"(weights {steps[1]['weights_bytes'] / 1048576:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
