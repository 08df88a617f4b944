"""Several built repositories (two encoders of different tasks and a generator) packed into one real
tritonserver (bundled in nvidia-pytriton, CPU) in explicit model-control mode by model_repo.model_set:
each answers as in-process transformers does; one is replaced and one removed while the others keep
answering under concurrent load, with no failed request. Every test runs twice: each model in its own
Python stub, and with the shared runtime (the encoders in one host model, each behind a forwarder stub
that imports no torch)."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SENTENCES, greedy_text, infer_texts, make_bert_checkpoint, make_gpt2_checkpoint, serving

from model_repo.build import build_repository, read_record
from model_repo.model_set import SHARED_HOST, SharedRuntime, TritonRepositoryClient, reconcile
from model_repo.options import BuildOptions
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

pytestmark = pytest.mark.triton

CLASSIFIER, NER, GENERATOR = "classifier", "ner", "generator"
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
TOPICS = {0: "sport", 1: "politics", 2: "science", 3: "art"}


@dataclass
class Packed:
    server: TritonServer
    served: Path
    root: Path
    checkpoints: dict[str, Path]
    shared: SharedRuntime | None
    repositories: dict[str, Path] = field(default_factory=dict)

    def reconcile(self) -> None:
        report = self.reconcile_to(self.repositories)
        assert not report.failed, report.failed

    def reconcile_to(self, desired: dict[str, Path], failed_before: dict[str, Path] | None = None) -> Any:
        client = TritonRepositoryClient(self.server.http_url)
        return reconcile(self.served, desired, client, failed_before, shared_runtime=self.shared)


def _build(root: Path, name: str, checkpoint: Path, tag: str) -> Path:
    options = BuildOptions(source=f"file://{checkpoint}", model_name=name, max_batch_size=8)
    return build_repository(options, root / f"{name}-{tag}").path


@pytest.fixture(scope="module", params=[False, True], ids=["own-stubs", "shared-runtime"])
def packed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Packed]:
    root = tmp_path_factory.mktemp("packing")
    checkpoints = {
        CLASSIFIER: make_bert_checkpoint(
            root / "sentiment",
            "BertForSequenceClassification",
            num_labels=3,
            id2label=SENTIMENT,
            label2id={v: k for k, v in SENTIMENT.items()},
        ),
        "topics": make_bert_checkpoint(
            root / "topics",
            "BertForSequenceClassification",
            num_labels=4,
            id2label=TOPICS,
            label2id={v: k for k, v in TOPICS.items()},
        ),
        NER: make_bert_checkpoint(
            root / "ner",
            "BertForTokenClassification",
            num_labels=3,
            id2label={0: "O", 1: "B-PER", 2: "I-PER"},
            label2id={"O": 0, "B-PER": 1, "I-PER": 2},
        ),
        GENERATOR: make_gpt2_checkpoint(root / "gpt2"),
    }
    served = root / "served"
    served.mkdir()
    args = ["--model-control-mode=explicit", f"--model-repository={served}", *repository_server_args()]
    shared = SharedRuntime(root / "served.shared") if request.param else None
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        packed = Packed(server, served, root, checkpoints, shared)
        for name in (CLASSIFIER, NER, GENERATOR):
            packed.repositories[name] = _build(root, name, checkpoints[name], "v1")
        packed.reconcile()
        yield packed


def classify(packed: Packed, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    return infer_texts(packed.server.http_url, model, texts)


def generate(packed: Packed, prompt: str, max_tokens: int) -> str:
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True})
    request = urllib.request.Request(
        f"http://{packed.server.http_url}/v2/models/{GENERATOR}/generate_stream", data=body.encode()
    )
    pieces = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                assert "error" not in event, event
                pieces.append(event.get("text_output", ""))
    return "".join(pieces)


def expected_scores(checkpoint: Path, texts: list[str]) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    with torch.inference_mode():
        return np.stack(
            [
                torch.softmax(
                    model(**tokenizer(t, return_tensors="pt", truncation=True)).logits[0], -1
                ).numpy()
                for t in texts
            ]
        )


def loaded(packed: Packed) -> dict[str, str]:
    """The served models' states (the shared runtime's host checked on its own: READY whenever used)."""
    index = TritonRepositoryClient(packed.server.http_url).index()
    states = {str(m["name"]): str(m.get("state")) for m in index}
    host = states.pop(SHARED_HOST, None)
    assert host == ("READY" if packed.shared else None), states
    return states


def test_three_models_of_three_tasks_share_one_server_and_each_answers_as_transformers(
    packed: Packed,
) -> None:
    from transformers import pipeline

    assert loaded(packed) == {CLASSIFIER: "READY", NER: "READY", GENERATOR: "READY"}
    outputs = classify(packed, CLASSIFIER, SENTENCES)
    np.testing.assert_allclose(
        outputs["SCORES"], expected_scores(packed.checkpoints[CLASSIFIER], SENTENCES), atol=1e-5
    )

    reference = pipeline(
        "token-classification", model=str(packed.checkpoints[NER]), aggregation_strategy="simple"
    )
    entities = classify(packed, NER, SENTENCES)["ENTITIES"]
    found = 0
    for row, sentence in enumerate(SENTENCES):
        got = json.loads(entities[row][0])
        want = reference(sentence)
        assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
            (e["entity_group"], e["start"], e["end"]) for e in want
        ]
        found += len(got)
    assert found, "the random tagger tagged nothing: the comparison would be vacuous"

    prompt = "the quick brown fox"
    assert generate(packed, prompt, 8) == greedy_text(packed.checkpoints[GENERATOR], prompt, 8)[0]


def test_replace_and_remove_under_concurrent_load_fail_no_request(packed: Packed) -> None:
    sentiment = expected_scores(packed.checkpoints[CLASSIFIER], SENTENCES[:2])
    topics = expected_scores(packed.checkpoints["topics"], SENTENCES[:2])
    prompt = "hello world"
    generated, _ = greedy_text(packed.checkpoints[GENERATOR], prompt, 4)
    stop = threading.Event()
    errors: list[str] = []
    answers = {"sentiment": 0, "topics": 0, "ner": 0}

    def classifier_client() -> None:
        while not stop.is_set():
            try:
                scores = classify(packed, CLASSIFIER, SENTENCES[:2])["SCORES"]
            except Exception as exc:  # every failure is counted, none hidden
                errors.append(f"{CLASSIFIER}: {exc}")
                continue
            # Either version may answer during the change, but always whole and correct.
            if scores.shape == sentiment.shape and np.allclose(scores, sentiment, atol=1e-5):
                answers["sentiment"] += 1
            elif scores.shape == topics.shape and np.allclose(scores, topics, atol=1e-5):
                answers["topics"] += 1
            else:
                errors.append(f"{CLASSIFIER}: scores of neither version: {scores}")

    def ner_client() -> None:
        while not stop.is_set():
            try:
                classify(packed, NER, SENTENCES[:2])
                answers["ner"] += 1
            except Exception as exc:
                errors.append(f"{NER}: {exc}")

    # Built beforehand, as the operator's cache Job does: the change under load is the swap alone.
    replacement = _build(packed.root, CLASSIFIER, packed.checkpoints["topics"], "v2")
    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(classifier_client) for _ in range(2)]
        clients += [pool.submit(ner_client) for _ in range(2)]
        try:
            time.sleep(2)
            assert generate(packed, prompt, 4) == generated
            # Replace the classifier by another checkpoint (new labels), remove the generator.
            packed.repositories[CLASSIFIER] = replacement
            del packed.repositories[GENERATOR]
            packed.reconcile()
            time.sleep(2)
        finally:  # else a failure above leaves the pool waiting for clients that never stop
            stop.set()
        for client in clients:
            client.result()

    assert not errors, errors[:5]
    assert answers["sentiment"] > 0 and answers["topics"] > 0 and answers["ner"] > 0, answers
    # Unloaded and unlinked: Triton no longer lists it at all.
    assert loaded(packed) == {CLASSIFIER: "READY", NER: "READY"}
    assert not (packed.served / GENERATOR).exists()
    labels = classify(packed, CLASSIFIER, SENTENCES[:2])["LABEL"]
    assert {row[0].decode() for row in labels} <= set(TOPICS.values())
    assert read_record(packed.repositories[CLASSIFIER])["labels"] == list(TOPICS.values())


def test_a_model_that_fails_to_load_names_tritons_error_and_disturbs_no_other(packed: Packed) -> None:
    broken = _build(packed.root, "broken", packed.checkpoints[CLASSIFIER], "v1")
    (broken / "broken" / "1" / "checkpoint" / "config.json").write_text("{ this is not json")
    desired = {**packed.repositories, "broken": broken}
    report = packed.reconcile_to(desired)
    assert set(report.failed) == {"broken"}, report.failed
    assert "broken" in report.failed["broken"] and "config.json" in report.failed["broken"], report.failed
    states = loaded(packed)
    assert states["broken"] == "UNAVAILABLE"
    assert all(states[name] == "READY" for name in packed.repositories), states
    # Not retried while its repository is the same (each load would start a stub for nothing).
    again = packed.reconcile_to(desired, failed_before={"broken": report.links["broken"]})
    assert again.loaded == [] and "not retried" in again.failed["broken"]
    # Dropping it from the set unloads and unlinks it.
    assert "broken" in packed.reconcile_to(packed.repositories).unloaded
    assert "broken" not in loaded(packed)


def test_a_model_that_cannot_load_fails_as_triton_initialises_it_not_at_its_warm_up(packed: Packed) -> None:
    """tritonserver 2.51 crashes in about one load in three whose warm-up fails (docs/packing.md); with the
    shared runtime, every model that could not load used to fail there, at its forwarder's warm-up. Now
    the host's reason reaches Triton from the forwarder's `initialize`, load after load, and the server
    and its other models stay up."""
    broken = _build(packed.root, "broken", packed.checkpoints[CLASSIFIER], "again")
    (broken / "broken" / "1" / "checkpoint" / "config.json").write_text("{ this is not json")
    for _ in range(3):
        report = packed.reconcile_to({**packed.repositories, "broken": broken})
        assert "config.json" in report.failed["broken"], report.failed
        assert "warmup" not in report.failed["broken"], report.failed
        assert packed.server.process is not None and packed.server.process.poll() is None
    assert "broken" in packed.reconcile_to(packed.repositories).unloaded
    assert classify(packed, CLASSIFIER, SENTENCES[:1])["LABEL"].shape == (1, 1)


def test_each_built_repository_records_the_memory_it_needs(packed: Packed) -> None:
    import transformers

    record = read_record(packed.repositories[NER])
    assert record is not None
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(packed.checkpoints[NER]))
    memory = record["memory"]
    # float32 on CPU: four bytes a parameter, one instance.
    assert memory["weights_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert memory["activation_bytes"] > 0 and memory["kv_cache_bytes"] == 0
    assert memory["total_bytes"] == memory["weights_bytes"] + memory["activation_bytes"]

    generator = read_record(packed.root / f"{GENERATOR}-v1")
    assert generator is not None
    config = (packed.root / f"{GENERATOR}-v1" / GENERATOR / "config.pbtxt").read_text()
    sequences = int(
        config.split('key: "max_concurrent_sequences"')[1].split('string_value: "')[1].split('"')[0]
    )
    # GPT-2 tiny: 2 layers x (K and V) x 32 wide x 4 bytes a token, for each slot's whole context.
    per_token = 2 * 2 * 32 * 4
    assert generator["memory"]["kv_cache_bytes"] == per_token * generator["max_sequence_length"] * sequences


@pytest.mark.parametrize("names", [[], ["one"]], ids=["no-names", "too-few"])
def test_serve_wants_one_model_name_per_source(names: list[str], tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from model_repo import cli

    app = typer.Typer()
    app.command("serve")(cli.serve)
    app.command("build")(cli.build)
    args = ["serve", "--source", "file:///a", "--source", "file:///b", "--workdir", str(tmp_path)]
    for name in names:
        args += ["--model-name", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "need as many --model-name" in result.output, result.output


def test_serve_packs_repeated_sources_into_one_server(packed: Packed, tmp_path: Path) -> None:
    import os
    import sys

    from model_repo import cli
    from model_repo.triton import free_ports

    ports = [str(port) for port in free_ports(3)]
    command = [sys.executable, "-c", "import typer; from model_repo.cli import serve; typer.run(serve)"]
    command += ["--source", f"file://{packed.checkpoints[CLASSIFIER]}", "--model-name", "sentiment"]
    command += ["--source", f"file://{packed.checkpoints[NER]}", "--model-name", "people"]
    command += ["--max-batch-size", "8", "--workdir", str(tmp_path / "workdir")]
    command += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parent.parent)}
    log = tmp_path / "serve.log"
    with serving(command, log, env=env, stop_s=60):
        output = log.read_text()
        assert "ready: model 'sentiment' (text-classification" in output, output
        assert "ready: model 'people' (token-classification" in output, output
        index = TritonRepositoryClient(f"127.0.0.1:{ports[0]}").index()
        # Several sources share one runtime by default: the two encoders run in its host model.
        states = {m["name"]: m["state"] for m in index}
        assert states == {"sentiment": "READY", "people": "READY", SHARED_HOST: "READY"}, states
        server_processes = [
            p
            for p in Path("/proc").iterdir()
            if p.name.isdigit()
            and _cmdline(p).startswith(_tritonserver())
            and f"--http-port={ports[0]}" in _cmdline(p)
        ]
        assert len(server_processes) == 1, "two models, one tritonserver"


def _stubs(packed: Packed) -> dict[str, Path]:
    """Served model name -> /proc entry of its Python-backend stub (one instance each here)."""
    assert packed.server.process is not None
    stubs = {}
    for entry in Path("/proc").iterdir():
        command = _cmdline(entry)
        if entry.name.isdigit() and "triton_python_backend_stub" in command and str(packed.served) in command:
            stubs[command.split(str(packed.served) + "/")[1].split("/")[0]] = entry
    return stubs


def _maps_torch(entry: Path) -> bool:
    return "libtorch_cpu" in (entry / "maps").read_text()


def _mapped_cuda_libraries(entry: Path) -> set[str]:
    """The CUDA libraries a process has loaded (torch's libtorch_cuda and libc10_cuda, cuBLAS, cuDNN,
    NCCL), except the CUDA runtime that Triton's own stub binary links: every stub maps that one, and it
    creates no CUDA context until it is called."""
    paths = {line.split()[-1] for line in (entry / "maps").read_text().splitlines() if "/" in line}
    names = {Path(path).name for path in paths}
    return {
        name
        for name in names
        if any(part in name.lower() for part in ("cuda", "cublas", "cudnn", "nccl"))
        and not name.startswith("libcudart")
    }


def test_the_shared_runtime_loads_torch_and_cuda_once_for_all_encoders(packed: Packed) -> None:
    if packed.shared is None:
        pytest.skip("each model has its own stub in this layout")
    stubs = _stubs(packed)
    assert set(stubs) == {SHARED_HOST, CLASSIFIER, NER}, stubs  # the generator was removed above
    assert _maps_torch(stubs[SHARED_HOST])
    assert not _maps_torch(stubs[CLASSIFIER]) and not _maps_torch(stubs[NER])
    # On a GPU node only the host's stub can create a CUDA context through torch: the forwarders load
    # none of torch's CUDA libraries. (With a CUDA build of torch, as PyPI's on Linux, the host maps
    # libtorch_cuda even on this CPU.)
    torch_spec = importlib.util.find_spec("torch")
    assert torch_spec is not None and torch_spec.origin is not None
    if (Path(torch_spec.origin).parent / "lib" / "libtorch_cuda.so").exists():
        assert "libtorch_cuda.so" in _mapped_cuda_libraries(stubs[SHARED_HOST])
    assert _mapped_cuda_libraries(stubs[CLASSIFIER]) == set() == _mapped_cuda_libraries(stubs[NER])


def test_removing_a_packed_encoder_frees_it_in_the_shared_host(packed: Packed) -> None:
    if packed.shared is None:
        pytest.skip("each model has its own stub in this layout")
    remaining = {name: path for name, path in packed.repositories.items() if name != NER}
    assert packed.reconcile_to(remaining).unloaded == [NER]
    deadline = time.monotonic() + 30
    while f"released model {NER} " not in packed.server.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"released model {NER} " in packed.server.log()
    packed.reconcile()  # back as it was: loaded again through the host, answering as before
    assert loaded(packed) == {CLASSIFIER: "READY", NER: "READY"}
    assert classify(packed, NER, SENTENCES[:1])["ENTITIES"].shape == (1, 1)


def test_a_bad_request_stays_the_clients_error_and_fails_no_other(packed: Packed) -> None:
    """A client's mistake is HTTP 400 with the runtime's reason, not a server error (a BLS answer loses
    its code: the shared runtime carries it), and it fails only its own request: sent at once with good
    ones, which the batcher may merge into one host request with it, those still get their answers."""

    def post(text: str) -> tuple[int, str]:
        body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
        request = urllib.request.Request(
            f"http://{packed.server.http_url}/v2/models/{CLASSIFIER}/infer", data=json.dumps(body).encode()
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    texts = [*SENTENCES[:3], "", *SENTENCES[3:7]]
    for _ in range(3):
        with ThreadPoolExecutor(len(texts)) as pool:
            outcomes = list(pool.map(post, texts))
        for text, (status, body) in zip(texts, outcomes, strict=True):
            if text:
                assert status == 200 and '"name":"SCORES"' in body, (status, body)
            else:
                assert status == 400 and "must be non-empty text" in body, (status, body)


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tritonserver() -> str:
    from model_repo.triton import find_tritonserver

    return str(find_tritonserver().binary)
