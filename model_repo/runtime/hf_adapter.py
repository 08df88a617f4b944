"""Every transformers cache internal the generation runtime touches, behind one adapter checked at model load.

The engine (decoding.py) runs its own scheduler over the model's public `forward`; its decoding steps
run, for Llama-family models, over decode_step.py's forward, which checks the model's module layout
itself. What both need of transformers' `DynamicCache` beyond public API is its layout: a `layers` list of
full-attention layers whose `keys`/`values` tensors are [batch, kv_heads, positions, head_dim], and the
`update` a layer gets from the attention each forward (decode_step.py calls it through `layer_update`).
Rows join and leave the running batch by editing those tensors, and the running batch's layers
(`growing_cache`) write each step's positions in place rather than concatenating. A future transformers
that renames or reshapes any of this would otherwise fail in odd ways (or, worse, silently attend to the
wrong positions), so `check` runs once at load and refuses the model naming the attribute and the
supported versions.

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


# Free positions a running batch's cache layers keep after their last one: a decoding step writes its keys
# and values there instead of concatenating (copying) every layer's whole cache, which on a CPU was a fifth
# of a small model's step (bench/README.md, text generation); a layer out of room grows by this much again.
GROWTH_POSITIONS = 64

_growing_layer_class: Any = None


def _growing_layer() -> Any:
    """DynamicLayer with its keys/values as views of buffers that have room after the last position."""
    global _growing_layer_class
    if _growing_layer_class is not None:
        return _growing_layer_class
    _, dynamic_layer = _dynamic_cache_class()

    class GrowingLayer(dynamic_layer):  # type: ignore[misc,valid-type]
        def hold(self, keys: Any, values: Any) -> None:
            """Keep these [batch, heads, positions, dim] tensors (copied into buffers with room)."""
            self.adopt(with_room(keys), with_room(values), keys.shape[-2])

        def adopt(self, key_buffer: Any, value_buffer: Any, length: int) -> None:
            """Keep these buffers as they are: their first `length` positions are the cache."""
            self.dtype, self.device = key_buffer.dtype, key_buffer.device
            self.is_initialized = True
            self.length = length
            self.buffers = [key_buffer, value_buffer]
            self.keys, self.values = (buffer[:, :, :length] for buffer in self.buffers)

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.hold(key_states, value_states)
                return self.keys, self.values
            end = self.length + key_states.shape[-2]
            if end > self.buffers[0].shape[-2]:
                self.hold(self.keys, self.values)
            for buffer, new in zip(self.buffers, (key_states, value_states), strict=True):
                buffer[:, :, self.length : end] = new
            key_buffer, value_buffer = self.buffers
            self.adopt(key_buffer, value_buffer, end)
            return self.keys, self.values

    _growing_layer_class = GrowingLayer
    return GrowingLayer


def with_room(tensor: Any) -> Any:
    """A copy of [batch, heads, positions, dim] in a buffer GROWTH_POSITIONS positions longer."""
    buffer = zeros_with_room(tensor, tensor.shape[0], tensor.shape[2])
    buffer[:, :, : tensor.shape[2]] = tensor
    return buffer


def zeros_with_room(sample: Any, rows: int, positions: int) -> Any:
    """A zero buffer like `sample` ([batch, heads, positions, dim]) for `rows` rows and `positions` positions,
    with GROWTH_POSITIONS more after them."""
    return sample.new_zeros((rows, sample.shape[1], positions + GROWTH_POSITIONS, sample.shape[3]))


def growing_cache(buffers: list[tuple[Any, Any]], positions: int) -> Any:
    """A cache whose layers hold the first `positions` positions of these per-layer (keys, values) buffers
    (from `zeros_with_room`) and write later positions in place: the running batch's, which gains one
    position per row every step."""
    cache = cache_from_tensors(
        [(keys[:, :, :positions], values[:, :, :positions]) for keys, values in buffers]
    )
    growing_layer = _growing_layer()
    layers = []
    for keys, values in buffers:
        layer = growing_layer()
        layer.adopt(keys, values, positions)
        layers.append(layer)
    cache.layers = layers
    return cache


def adopt_buffers(cache: Any, buffers: list[tuple[Any, Any]], positions: int) -> None:
    """Refill a `growing_cache` with new buffers (rows joined)."""
    for layer, (keys, values) in zip(cache.layers, buffers, strict=True):
        layer.adopt(keys, values, positions)


def layer_update(cache: Any, index: int, keys: Any, values: Any) -> tuple[Any, Any]:
    """Layer `index` takes one forward's new [batch, kv_heads, new positions, head_dim] keys and values, as
    the model's attention hands them over; returns the layer's keys and values, the new ones included."""
    return cache.layers[index].update(keys, values)  # type: ignore[no-any-return]


def layer_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer (keys, values), each [batch, kv_heads, positions, head_dim]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def set_layer_tensors(cache: Any, tensors: list[tuple[Any, Any]]) -> None:
    """Replace every layer's tensors (rows joined or left, padding trimmed)."""
    growing_layer = _growing_layer()
    for layer, (keys, values) in zip(cache.layers, tensors, strict=True):
        if isinstance(layer, growing_layer):
            layer.hold(keys, values)
        else:
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
    growing = growing_cache(
        [(with_room(keys), with_room(values)) for keys, values in layer_tensors(cache)], positions=2
    )
    with torch.inference_mode():
        model(
            input_ids=ids[:, :1],
            attention_mask=torch.ones((1, 3), dtype=torch.long, device=device),
            position_ids=torch.tensor([[2]], device=device),
            past_key_values=growing,
            use_cache=True,
        )
    if growing.get_seq_length() != 3 or any(layer.length != 3 for layer in growing.layers):
        raise _refuse("a cache layer's `update` is not called with each forward's new positions")
