"""Inspect a checkpoint: read its config files (never its code) and decide task, labels and limits."""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_repo.errors import BuildError
from model_repo.options import Task

# Auto classes transformers registers per task; the builder asks transformers rather than keeping its
# own list of model families, so any architecture transformers supports for a task works.
_TASK_MAPPING_NAMES: dict[Task, str] = {
    Task.TEXT_CLASSIFICATION: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    Task.TOKEN_CLASSIFICATION: "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    Task.TEXT_GENERATION: "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    Task.FILL_MASK: "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    Task.FEATURE_EXTRACTION: "MODEL_MAPPING_NAMES",
}
# Order matters when a class name appears in several mappings: heads before the bare encoder.
_INFERENCE_ORDER: tuple[Task, ...] = (
    Task.TEXT_CLASSIFICATION,
    Task.TOKEN_CLASSIFICATION,
    Task.TEXT_GENERATION,
    Task.FILL_MASK,
    Task.FEATURE_EXTRACTION,
)
# For trusted remote-code checkpoints the task comes from the auto_map keys instead.
_AUTO_MAP_TASKS: dict[str, Task] = {
    "AutoModelForSequenceClassification": Task.TEXT_CLASSIFICATION,
    "AutoModelForTokenClassification": Task.TOKEN_CLASSIFICATION,
    "AutoModelForCausalLM": Task.TEXT_GENERATION,
    "AutoModelForMaskedLM": Task.FILL_MASK,
    "AutoModel": Task.FEATURE_EXTRACTION,
}
# A tokenizer's vocabulary: a checkpoint needs one of these, or a sentencepiece model (SENTENCEPIECE_FILES).
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.txt", "vocab.json")
SENTENCEPIECE_FILES = "*.model"
# Every file a tokenizer may read: the vocabulary and what configures it (fetched, and copied for it).
TOKENIZER_FILES = (
    *TOKENIZER_VOCABULARIES,
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_SUPPORTED_ST_MODULES = ("Transformer", "Pooling", "Normalize")
# Activations sentence-transformers' CrossEncoder may save (by the torch class's import path), as the
# runtime names them. Its default without one: sigmoid for a single logit, identity otherwise.
CROSS_ENCODER_ACTIVATIONS: dict[str, str] = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}


@dataclass(frozen=True)
class SentenceTransformersInfo:
    pooling: str  # "mean", "cls", "max" or "lasttoken"
    normalize: bool
    max_seq_length: int | None


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    files: tuple[str, ...]
    config: dict[str, Any]
    model_type: str
    architectures: tuple[str, ...]
    task: Task
    labels: tuple[str, ...]
    weights: str  # "safetensors" or "pickle"
    needs_remote_code: bool
    sentence_transformers: SentenceTransformersInfo | None = None
    max_positions: int | None = None
    hidden_size: int | None = None
    problem_type: str | None = field(default=None)
    # text-ranking: the activation applied to the single logit ("sigmoid", "identity", "tanh").
    ranking_activation: str | None = None
    # A sentence-transformers CrossEncoder checkpoint (its files say it was saved as one).
    cross_encoder: bool = False


def _mapping(task: Task) -> dict[str, Any]:
    from transformers.models.auto import modeling_auto

    mapping: dict[str, Any] = getattr(modeling_auto, _TASK_MAPPING_NAMES[task])
    return mapping


def _class_names(value: Any) -> set[str]:
    return set(value) if isinstance(value, list | tuple) else {str(value)}


def tasks_for_model_type(model_type: str) -> list[Task]:
    tasks = [task for task in _INFERENCE_ORDER if model_type in _mapping(task)]
    return _with_ranking(tasks)


def _with_ranking(tasks: list[Task]) -> list[Task]:
    """A sequence-classification head can score text pairs: text-ranking comes with text-classification."""
    if Task.TEXT_CLASSIFICATION in tasks:
        tasks.insert(tasks.index(Task.TEXT_CLASSIFICATION) + 1, Task.TEXT_RANKING)
    return tasks


def cross_encoder_activation_path(root: Path, files: tuple[str, ...], config: dict[str, Any]) -> str | None:
    """The activation a sentence-transformers CrossEncoder checkpoint names ("" for its default); None
    when the checkpoint was not saved as a CrossEncoder. Versions >= 5 write config_sentence_transformers.json
    with model_type CrossEncoder, 4.x wrote config.json's `sentence_transformers`, older ones
    `sbert_ce_default_activation_function`."""
    if "config_sentence_transformers.json" in files:
        name = "config_sentence_transformers.json"
        st_config = _read_json(root / name, name)
        if isinstance(st_config, dict) and st_config.get("model_type") == "CrossEncoder":
            return str(st_config.get("activation_fn") or "")
    nested = config.get("sentence_transformers")
    if isinstance(nested, dict) and "activation_fn" in nested:
        return str(nested.get("activation_fn") or "")
    if config.get("sbert_ce_default_activation_function"):
        return str(config["sbert_ce_default_activation_function"])
    return None


def _ranking_activation(path: str | None, num_labels: int) -> str:
    if num_labels != 1:
        raise BuildError(
            f"text-ranking needs a single relevance logit (num_labels 1); this checkpoint has {num_labels} "
            "labels: serve it as text-classification (which also accepts text pairs)"
        )
    if not path:
        return "sigmoid"
    if path not in CROSS_ENCODER_ACTIVATIONS:
        raise BuildError(
            f"the CrossEncoder activation {path!r} is not supported; supported: "
            f"{', '.join(sorted(CROSS_ENCODER_ACTIVATIONS))}"
        )
    return CROSS_ENCODER_ACTIVATIONS[path]


def task_of_architectures(architectures: tuple[str, ...]) -> Task | None:
    """The task the checkpoint was saved for, from the classes config.json names; None if unknown."""
    for task in _INFERENCE_ORDER:
        known: set[str] = set()
        for value in _mapping(task).values():
            known |= _class_names(value)
        if any(arch in known for arch in architectures):
            return task
    return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{what} is not valid JSON: {exc}") from exc


def _sentence_transformers(root: Path, files: tuple[str, ...]) -> SentenceTransformersInfo | None:
    if "modules.json" not in files:
        return None
    modules = _read_json(root / "modules.json", "modules.json")
    if not isinstance(modules, list):
        raise BuildError("modules.json must be a list of sentence-transformers modules")
    pooling = "cls"
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_ST_MODULES:
            raise BuildError(
                f"sentence-transformers module {module.get('type')!r} is not supported; "
                f"supported modules: {', '.join(_SUPPORTED_ST_MODULES)}"
            )
        if kind == "Normalize":
            normalize = True
        if kind == "Pooling":
            pooling_config_name = f"{module.get('path', '').strip('/')}/config.json"
            if pooling_config_name not in files:
                raise BuildError(f"sentence-transformers pooling config {pooling_config_name} is missing")
            pooling_config = _read_json(root / pooling_config_name, pooling_config_name)
            pooling = _pooling_mode(pooling_config)
    max_seq_length = None
    if "sentence_bert_config.json" in files:
        st_config = _read_json(root / "sentence_bert_config.json", "sentence_bert_config.json")
        if isinstance(st_config.get("max_seq_length"), int):
            max_seq_length = int(st_config["max_seq_length"])
    return SentenceTransformersInfo(pooling=pooling, normalize=normalize, max_seq_length=max_seq_length)


def _pooling_mode(pooling_config: dict[str, Any]) -> str:
    mode = pooling_config.get("pooling_mode")
    if isinstance(mode, str):
        chosen = [mode.replace("_tokens", "").replace("_token", "")]
    else:
        flags = {
            "cls": pooling_config.get("pooling_mode_cls_token"),
            "mean": pooling_config.get("pooling_mode_mean_tokens"),
            "max": pooling_config.get("pooling_mode_max_tokens"),
            "lasttoken": pooling_config.get("pooling_mode_lasttoken"),
        }
        chosen = [name for name, enabled in flags.items() if enabled]
    if len(chosen) != 1 or chosen[0] not in ("cls", "mean", "max", "lasttoken"):
        raise BuildError(
            f"unsupported sentence-transformers pooling {chosen or 'none'}; "
            "exactly one of cls, mean, max, lasttoken is supported"
        )
    return chosen[0]


def inspect_checkpoint(
    root: Path, files: tuple[str, ...], task: Task | None, trust_remote_code: bool
) -> CheckpointInfo:
    """Read config files only. Raises BuildError naming the problem and the choices."""
    if "config.json" not in files:
        raise BuildError(f"no config.json in the checkpoint at {root}: not a Transformers checkpoint")
    config = _read_json(root / "config.json", "config.json")
    if not isinstance(config, dict):
        raise BuildError("config.json must hold a JSON object")
    model_type = str(config.get("model_type") or "")
    architectures = tuple(str(a) for a in config.get("architectures") or ())

    from transformers.models.auto import configuration_auto

    known_model_types: dict[str, str] = getattr(configuration_auto, "CONFIG_MAPPING_NAMES")  # noqa: B009

    auto_map = config.get("auto_map") or {}
    needs_remote_code = model_type not in known_model_types
    if needs_remote_code:
        if not auto_map:
            raise BuildError(
                f"config.json model_type {model_type!r} is unknown to this transformers version "
                "and the checkpoint ships no code for it"
            )
        if not trust_remote_code:
            raise BuildError(
                f"this checkpoint needs code shipped inside it (model_type {model_type!r}, "
                f"auto_map {sorted(auto_map)}); refusing to run it. Set the option "
                "trustRemoteCode: true (CLI: --trust-remote-code) only if you trust its author"
            )

    vocabularies = (*TOKENIZER_VOCABULARIES, SENTENCEPIECE_FILES)
    if not any(fnmatch.fnmatchcase(name, pattern) for name in files for pattern in vocabularies):
        raise BuildError(
            "no tokenizer in the checkpoint: expected tokenizer.json, vocab.txt, vocab.json+merges.txt "
            "or a sentencepiece *.model file"
        )
    if any(name.endswith(".safetensors") for name in files):
        weights = "safetensors"
    elif any(name.startswith("pytorch_model") and name.endswith(".bin") for name in files):
        weights = "pickle"
    else:
        raise BuildError("no weights in the checkpoint: expected *.safetensors or pytorch_model*.bin")

    activation_path = cross_encoder_activation_path(root, files, config)
    cross_encoder = activation_path is not None
    # A CrossEncoder's modules.json describes its scoring pipeline, not an embedding one.
    st_info = None if cross_encoder else _sentence_transformers(root, files)
    if needs_remote_code:
        supported = _with_ranking([t for key, t in _AUTO_MAP_TASKS.items() if key in auto_map])
        default = Task.TEXT_RANKING if cross_encoder else (supported[0] if supported else None)
        resolved = task or (Task.FEATURE_EXTRACTION if st_info else default)
        if resolved is None or resolved not in supported:
            raise BuildError(
                f"task {resolved or '(none)'} is not provided by this checkpoint's code; "
                f"its auto_map offers: {', '.join(t.value for t in supported) or 'nothing usable'}"
            )
    else:
        supported = tasks_for_model_type(model_type)
        if task is not None:
            resolved = task
        elif cross_encoder:
            resolved = Task.TEXT_RANKING
        elif st_info is not None:
            resolved = Task.FEATURE_EXTRACTION
        else:
            inferred = task_of_architectures(architectures)
            if inferred is None:
                raise BuildError(
                    f"cannot tell the task from architectures {list(architectures) or '(none)'}; "
                    f"pass --task, one of: {', '.join(t.value for t in supported) or '(none for this model)'}"
                )
            resolved = inferred
        if resolved not in supported:
            raise BuildError(
                f"model_type {model_type!r} has no {resolved.value} head in transformers; "
                f"supported tasks for it: {', '.join(t.value for t in supported) or 'none'}"
            )

    labels: tuple[str, ...] = ()
    if resolved in (Task.TEXT_CLASSIFICATION, Task.TOKEN_CLASSIFICATION):
        id2label = config.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            raise BuildError(f"task {resolved.value} needs id2label in config.json")
        try:
            ordered = sorted((int(key), str(value)) for key, value in id2label.items())
        except ValueError as exc:
            raise BuildError("config.json id2label keys must be integers") from exc
        if [index for index, _ in ordered] != list(range(len(ordered))):
            raise BuildError("config.json id2label must number labels 0..N-1 without gaps")
        labels = tuple(value for _, value in ordered)

    ranking_activation = None
    if resolved is Task.TEXT_RANKING:
        id2label = config.get("id2label")
        num_labels = len(id2label) if isinstance(id2label, dict) and id2label else config.get("num_labels", 2)
        ranking_activation = _ranking_activation(activation_path, int(num_labels))

    max_positions = None
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            max_positions = int(config[key])
            break
    hidden = config.get("hidden_size", config.get("n_embd", config.get("d_model")))
    return CheckpointInfo(
        path=root,
        files=files,
        config=config,
        model_type=model_type,
        architectures=architectures,
        task=resolved,
        labels=labels,
        weights=weights,
        needs_remote_code=needs_remote_code,
        sentence_transformers=st_info,
        max_positions=max_positions,
        hidden_size=int(hidden) if isinstance(hidden, int) else None,
        problem_type=config.get("problem_type"),
        ranking_activation=ranking_activation,
        cross_encoder=cross_encoder,
    )


@dataclass(frozen=True)
class PreparedCheckpoint:
    """What a format writes from: the inspected checkpoint, its tokenizer and (unless vLLM serves the
    files as they are) its weights loaded, and the dtype and sequence limit the build resolved."""

    info: CheckpointInfo
    tokenizer: Any
    model: Any | None
    dtype: str
    max_length: int
    hidden_size: int


def is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or fnmatch.fnmatchcase(name, SENTENCEPIECE_FILES)


def copy_checkpoint(info: CheckpointInfo, target: Path, model: Any | None) -> None:
    """Copy config, tokenizer and weights; pickled weights are re-saved as safetensors on the way."""
    target.mkdir(parents=True, exist_ok=True)
    for name in info.files:
        if info.weights == "pickle" and (name.endswith(".bin") or name == "pytorch_model.bin.index.json"):
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.path / name, destination)
    if info.weights == "pickle":
        assert model is not None
        model.save_pretrained(str(target), safe_serialization=True)
