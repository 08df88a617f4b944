"""The running batch's decoding step as its own forward, for Llama-family checkpoints.

A decoding step feeds one token per row. transformers' forward spends most of such a step around the
arithmetic: building the attention mask, recomputing the rotary angles, its keyword plumbing and output
records. On a 2-core CPU the bench model (4 layers, hidden 512) took 2.71-2.76 ms a step through the
model's forward and 2.14-2.17 ms through this one, with bit-identical logits (bench/README.md, text
generation, session 17). Prefill (many tokens a row) stays the model's own forward: there the arithmetic
dominates.

This forward calls the model's own modules (embeddings, projections, norms' weights, MLP, head) in the
order and with the operations of transformers' Llama code, so its logits equal the model's: the attention
runs as transformers' SDPA path runs it for one query position (grouped-query heads through `enable_gqa`
without a mask, packed per key/value head with one), the rotary angles come from the model's own rotary
module (once per position, kept), and RMSNorm computes in float32 as transformers' does.

What it needs beyond public API is the module layout of Llama, Mistral and Qwen2 (their decoder layers
are the same); the cache it writes through is hf_adapter.py's. `DecodeStep.attach` checks that layout
and then compares this forward with the model's own over a few steps of two rows, padded and not; a
difference, another architecture or another layout keeps the model's forward and says why.

The builder copies this file next to `model.py` for the generator role; it imports torch (and
hf_adapter.py) only.
"""

from __future__ import annotations

from typing import Any

from . import hf_adapter

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Rotary variants whose angles depend on the position alone (so they can be computed once per position);
# "dynamic" and "longrope" rescale with the sequence's length.
POSITION_ONLY_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# The largest difference from the model's own logits accepted at load, relative to their largest
# magnitude: float32 steps agree exactly here; lower precisions may round a product differently.
AGREEMENT = {"float32": 1e-5, "other": 1e-2}


class Unsupported(Exception):
    """This model's decoding steps keep the model's own forward (the message says why)."""


class DecodeStep:
    """`step(ids, mask, positions, cache)`: [rows, vocab] logits of one decoding step, as the model's own
    forward gives them (`decoding.last_logits`)."""

    def __init__(self, model: Any) -> None:
        config = model.config
        model_type = getattr(config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise Unsupported(f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
        if getattr(config, "hidden_act", "") != "silu":
            raise Unsupported(f"activation {getattr(config, 'hidden_act', None)!r} is not silu")
        if getattr(config, "_attn_implementation", "") != "sdpa":
            raise Unsupported(f"attention implementation {config._attn_implementation!r} is not sdpa")
        inner = model.model
        rope_type = getattr(inner.rotary_emb, "rope_type", None)
        if rope_type not in POSITION_ONLY_ROPE_TYPES:
            kinds = ", ".join(POSITION_ONLY_ROPE_TYPES)
            raise Unsupported(f"rotary type {rope_type!r} is not one of {kinds}")
        self.model = model
        self.embed, self.norm, self.head = inner.embed_tokens, inner.norm, model.lm_head
        self.rotary = inner.rotary_emb
        self.layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm,
                    attention.q_proj,
                    attention.k_proj,
                    attention.v_proj,
                    attention.o_proj,
                    layer.post_attention_layernorm,
                    mlp.gate_proj,
                    mlp.up_proj,
                    mlp.down_proj,
                )
            )
        first = inner.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.groups = int(first.num_key_value_groups)
        self.scaling = float(first.scaling)
        self.cos: Any = None
        self.sin: Any = None

    @classmethod
    def attach(cls, model: Any) -> tuple[DecodeStep | None, str]:
        """This forward if the model's layout allows it and it agrees with the model's own; else None and
        why."""
        try:
            step = cls(model)
        except Unsupported as exc:
            return None, f"the model's own forward decodes: {exc}"
        except AttributeError as exc:  # a transformers whose modules are laid out otherwise
            return None, f"the model's own forward decodes: its modules are not laid out as expected ({exc})"
        try:
            difference = step.difference_from_model()
        except Exception as exc:  # any failure here leaves the model's own forward decoding
            return None, f"the model's own forward decodes: this step failed on the model ({exc!r})"
        dtype = next(model.parameters()).dtype
        tolerance = AGREEMENT["float32" if str(dtype) == "torch.float32" else "other"]
        if difference > tolerance:
            return None, (
                f"the model's own forward decodes: this step's logits differ from it by {difference:.3g} "
                f"of their largest (accepted: {tolerance:g})"
            )
        return step, f"decoding steps run through their own forward (logits within {difference:.3g})"

    def _angles(self, positions: Any, bound: int, sample: Any) -> tuple[Any, Any]:
        """[rows, 1, 1, head_dim] cos and sin of these positions (all below `bound`, a host-side count, so
        that no device value is read back), from the model's own rotary module."""
        import torch

        if self.cos is None or self.cos.shape[0] < bound or self.cos.dtype != sample.dtype:
            count = max(bound, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            every = torch.arange(count, device=sample.device)[None]
            cos, sin = self.rotary(sample, every)
            self.cos, self.sin = cos[0], sin[0]
        rows = positions.reshape(-1)
        return self.cos[rows][:, None, None, :], self.sin[rows][:, None, None, :]

    @staticmethod
    def _rms_norm(hidden: Any, norm: Any) -> Any:
        """transformers' Llama RMSNorm, operation for operation (float32 inside)."""
        import torch

        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + norm.variance_epsilon)
        return norm.weight * hidden.to(dtype)

    @staticmethod
    def _rotate(states: Any, cos: Any, sin: Any) -> Any:
        import torch

        half = states.shape[-1] // 2
        return (states * cos) + (torch.cat((-states[..., half:], states[..., :half]), dim=-1) * sin)

    def __call__(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """[rows, vocab] logits for `ids` [rows, 1] at `positions` [rows, 1]; `mask` [rows, columns] (1 where
        a row has a position, this step's column included) or None when no row is padded; `cache` gains
        this step's keys and values through its layers' `update`."""
        import torch
        from torch.nn import functional

        rows = ids.shape[0]
        hidden = self.embed(ids)
        # A row's position is below the cache's columns after this step's (the longest row's count).
        cos, sin = self._angles(positions, cache.get_seq_length() + ids.shape[1], hidden)
        attend = None if mask is None else mask.to(torch.bool)[:, None, None, :]
        shape = (rows, 1, -1, self.head_dim)
        for index, (norm_in, q, k, v, o, norm_post, gate, up, down) in enumerate(self.layers):
            states = self._rms_norm(hidden, norm_in)
            query = self._rotate(q(states).view(shape).transpose(1, 2), cos, sin)
            key = self._rotate(k(states).view(shape).transpose(1, 2), cos, sin)
            value = v(states).view(shape).transpose(1, 2)
            keys, values = hf_adapter.layer_update(cache, index, key, value)
            if self.groups == 1:
                attended = functional.scaled_dot_product_attention(
                    query, keys, values, attn_mask=attend, scale=self.scaling
                )
            elif attend is None and self.head_dim <= 256:
                attended = functional.scaled_dot_product_attention(
                    query, keys, values, scale=self.scaling, enable_gqa=True
                )
            else:  # one query position: a key/value head's query heads as its rows (transformers' pack_gqa)
                packed = query.reshape(rows, query.shape[1] // self.groups, self.groups, self.head_dim)
                attended = functional.scaled_dot_product_attention(
                    packed, keys, values, attn_mask=attend, scale=self.scaling
                ).reshape(rows, -1, 1, self.head_dim)
            attended = attended.transpose(1, 2).contiguous().reshape(rows, 1, -1).contiguous()
            hidden = hidden + o(attended)
            states = self._rms_norm(hidden, norm_post)
            hidden = hidden + down(functional.silu(gate(states)) * up(states))
        hidden = self._rms_norm(hidden, self.norm)
        return self.head(hidden[:, -1:, :])[:, -1, :]

    def difference_from_model(self, steps: int = 3) -> float:
        """The largest difference between this step's logits and the model's own, relative to their
        largest magnitude, over `steps` steps of two rows of different lengths (padded) and of one row."""
        import torch

        from . import decoding

        vocab = int(self.model.config.vocab_size)
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, vocab, (length,), generator=generator).tolist() for length in (11, 5, 7)]
        worst = 0.0
        with torch.inference_mode():
            for group in (prompts[:2], prompts[2:]):
                batches = []
                for step in (None, self):
                    batch = decoding.RunningBatch(self.model, step)
                    for prompt in group:
                        logits, tensors, _ = decoding.prefill(self.model, prompt, None)
                        batch.join(None, tensors, int(logits.argmax()))
                    batches.append(batch)
                for _ in range(steps):
                    theirs, ours = (batch.step() for batch in batches)
                    scale = float(theirs.abs().max()) or 1.0
                    worst = max(worst, float((ours - theirs).abs().max()) / scale)
                    tokens = theirs.argmax(dim=-1).tolist()
                    for batch in batches:
                        batch.pending = list(tokens)
        return worst
