"""Every transformers internal the generation runtime touches, behind one adapter checked at model load.

The engine (decoding.py) runs its own scheduler over the model's public `forward`; what it needs beyond
public API is the layout of transformers' `DynamicCache`: a `layers` list of full-attention layers whose
`keys`/`values` tensors are [batch, kv_heads, positions, head_dim] and grow by concatenation. Rows join
and leave the running batch by editing those tensors. A future transformers that renames or reshapes any
of this would otherwise fail in odd ways (or, worse, silently attend to the wrong positions), so `check`
runs once at load and refuses the model naming the attribute and the supported versions.

The builder copies this file next to `model.py`; it imports torch and transformers only.
"""

from __future__ import annotations

import inspect
from typing import Any

# The transformers releases this adapter was written and tested against (tests/model_repo/test_hf_adapter.py
# runs `check` against the pinned one).
SUPPORTED_TRANSFORMERS = ("5.23",)
FORWARD_ARGUMENTS = ("input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache")


class UnsupportedTransformers(RuntimeError):
    """The installed transformers (or this model's cache layout) is not what the engine was written for."""


def _refuse(what: str) -> UnsupportedTransformers:
    import transformers

    return UnsupportedTransformers(
        f"the generation runtime cannot use transformers {transformers.__version__}: {what}; supported "
        f"transformers versions: {', '.join(v + '.x' for v in SUPPORTED_TRANSFORMERS)}"
    )


def _dynamic_cache_class() -> Any:
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError as exc:
        raise _refuse(
            f"transformers.cache_utils.DynamicCache/DynamicLayer cannot be imported ({exc})"
        ) from exc
    return DynamicCache, DynamicLayer


def new_cache(model: Any) -> Any:
    """An empty cache for one sequence or batch, with the model's own layer types."""
    dynamic_cache, _ = _dynamic_cache_class()
    return dynamic_cache(config=model.config)


def cache_from_tensors(tensors: list[tuple[Any, Any]]) -> Any:
    """A cache holding these per-layer (keys, values) (used for a reused prompt prefix)."""
    dynamic_cache, _ = _dynamic_cache_class()
    return dynamic_cache(ddp_cache_data=[(keys, values) for keys, values in tensors])


def layer_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer (keys, values), each [batch, kv_heads, positions, head_dim]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def set_layer_tensors(cache: Any, tensors: list[tuple[Any, Any]]) -> None:
    """Replace every layer's tensors (rows joined or left, padding trimmed)."""
    for layer, (keys, values) in zip(cache.layers, tensors, strict=True):
        layer.keys, layer.values = keys, values


def check(model: Any) -> None:
    """Refuse (UnsupportedTransformers) unless every internal above exists with the expected shape.

    Runs a two-token forward through a fresh cache: cheap at load, and it checks the behaviour the engine
    relies on, not just the names.
    """
    import torch

    dynamic_cache, dynamic_layer = _dynamic_cache_class()
    parameters = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in FORWARD_ARGUMENTS if name not in parameters and not takes_any]
    if missing:
        raise _refuse(f"{type(model).__name__}.forward takes no {', '.join(missing)}")
    try:
        cache = dynamic_cache(config=model.config)
    except TypeError as exc:
        raise _refuse(f"DynamicCache(config=...) fails: {exc}") from exc
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        raise _refuse("DynamicCache has no `layers` list")
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not dynamic_layer})
    if odd:
        raise UnsupportedTransformers(
            f"{type(model).__name__} uses cache layers {', '.join(odd)} (sliding-window or other non-full "
            "attention); the generation runtime batches full-attention caches only"
        )
    device = next(model.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.inference_mode():
        model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(2, device=device)[None],
            past_key_values=cache,
            use_cache=True,
        )
    for index, layer in enumerate(cache.layers):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if not isinstance(tensor, torch.Tensor):
                raise _refuse(f"DynamicCache.layers[{index}].{name} is not a tensor after a forward")
            if tensor.dim() != 4 or tensor.shape[0] != 1 or tensor.shape[2] != 2:
                raise _refuse(
                    f"DynamicCache.layers[{index}].{name} has shape {tuple(tensor.shape)}, expected "
                    "[batch=1, kv_heads, positions=2, head_dim]"
                )
    rebuilt = cache_from_tensors(layer_tensors(cache))
    if rebuilt.get_seq_length() != 2:
        raise _refuse("DynamicCache(ddp_cache_data=...) does not hold the tensors it was given")
