"""The encoder's forward pass over a batch's real tokens only (no padding), for BERT-family checkpoints.

transformers' forward takes a padded [texts, longest text] batch, so every linear layer (about 90% of an
encoder's arithmetic) also runs on the padding. A batch that Triton's dynamic batcher hands the runtime is
a random draw of lengths (MiniLM's workload: 9 to 71 tokens, 60% real), and splitting it into passes of
similar lengths trades padding for the fixed cost of more passes. Here the texts' tokens are concatenated
into one [tokens, hidden] matrix: embeddings, the query/key/value projections (one fused matrix product in
float32), the attention output, the feed-forward layers and the task's head run on real tokens only;
only the attention itself runs per text, on padded views with a key mask (on a CPU one view per group of
texts of similar lengths, `plan_attention_groups`). The model's own modules and
weights do the arithmetic, so the outputs equal the model's own forward up to float rounding.

What this needs from transformers beyond its public API is the module layout of BERT, RoBERTa and
XLM-RoBERTa (embeddings, encoder layers, the task heads). `UnpaddedEncoder.attach` checks that layout at
load and then compares the two forwards on texts of several lengths; anything else (another architecture,
a renamed module, a mismatch) keeps the padded forward and says why in the log.

The builder copies this file next to `model.py` for the encoder role; it imports torch (and numpy) only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Array = Any
# The architectures whose module layout this forward follows, and how each numbers positions: BERT from 0,
# RoBERTa (fairseq) from the padding id + 1, skipping padding tokens.
POSITIONS_FROM_ZERO = ("bert",)
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta")
SUPPORTED_MODEL_TYPES = POSITIONS_FROM_ZERO + POSITIONS_AFTER_PADDING
# How far the load-time comparison may differ, relative to the largest reference output: float rounding
# of the fused or differently shaped matrix products (about 1e-6 in float32; a unit in the last place of
# bfloat16/float16; int8 quantises each pass's activations with its own scale). A wrong layout differs by
# the outputs' own size.
AGREEMENT = {"float32": 1e-3, "other": 5e-2}


# On a CPU, attention runs on texts of similar lengths together: a group of n texts padded to its longest
# L costs about n * L * L (query, key) pairs times the model's width, and every group one more call, here
# worth this many pairs times width: at MiniLM's width (384) 4,096 pairs, about one 64-token text's. 32
# texts of MiniLM's workload (9-71 tokens) took 3.4-3.9 ms a layer in one group and 2.0-3.0 ms in 2-8; a
# 64-wide model, whose pairs cost a sixth as much, ran 0.94x slower with MiniLM's 4,096 pairs
# (bench/README.md, data plane, "Session 13"). On an accelerator a call costs more than the padding it
# saves, so there the batch stays one group.
ATTENTION_GROUP_COST = 4096 * 384


def plan_attention_groups(lengths: Array, group_cost: float) -> list[Array]:
    """The texts (indices into `lengths`) of each attention group, shortest first: consecutive runs of the
    texts sorted by length, chosen to minimise the sum over groups of count * longest**2 + `group_cost`."""
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order].astype(np.float64)
    count = len(ordered)
    best = np.zeros(count + 1)
    start_of = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        starts = np.arange(end)
        # A group of texts starts..end-1 (sorted), its longest the last one.
        costs = best[:end] + (end - starts) * ordered[end - 1] ** 2 + group_cost
        choice = int(np.argmin(costs))
        best[end], start_of[end] = costs[choice], choice
    groups: list[Array] = []
    end = count
    while end > 0:
        groups.append(order[start_of[end] : end])
        end = int(start_of[end])
    return groups[::-1]


class Unsupported(Exception):
    """This model cannot run unpadded; the message says why (logged, the padded forward serves it)."""


class PackedBatch:
    """Where each text's tokens sit: rows of the packed [tokens, hidden] matrix, and the padded
    [texts, longest] view the attention runs on."""

    def __init__(self, ids: list[list[int]], types: list[list[int]] | None) -> None:
        self.lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
        self.count = len(ids)
        self.longest = int(self.lengths.max())
        self.tokens = int(self.lengths.sum())
        self.input_ids = np.fromiter((t for seq in ids for t in seq), dtype=np.int64, count=self.tokens)
        self.token_types = (
            np.fromiter((t for seq in types for t in seq), dtype=np.int64, count=self.tokens)
            if types is not None
            else None
        )
        self.starts = np.cumsum(self.lengths) - self.lengths
        # Position of each packed row within its text.
        self.offsets = np.arange(self.tokens, dtype=np.int64) - np.repeat(self.starts, self.lengths)
        valid = np.arange(self.longest)[None, :] < self.lengths[:, None]
        self.valid = valid
        # Each packed row's place in the flattened padded view, row-major.
        self.padded_rows = np.flatnonzero(valid.reshape(-1))
        self.uniform = bool((self.lengths == self.longest).all())

    def first_rows_of(self, token_id: int) -> Array:
        """The packed row of each text's first `token_id` (the runtime refuses texts without one)."""
        spans = zip(self.starts.tolist(), self.lengths.tolist(), strict=True)
        found = [int(np.argmax(self.input_ids[start : start + n] == token_id)) for start, n in spans]
        first: Array = self.starts + np.array(found, dtype=np.int64)
        return first

    def positions(self, model_type: str, padding_id: int | None) -> Array:
        if model_type in POSITIONS_FROM_ZERO or padding_id is None:
            return self.offsets
        # fairseq: position = padding id + the count of non-padding tokens so far in the text.
        real = (self.input_ids != padding_id).astype(np.int64)
        running = np.cumsum(real)
        before = np.repeat(running[self.starts] - real[self.starts], self.lengths)
        positions: Array = (running - before) * real + padding_id
        return positions


class UnpaddedEncoder:
    """The model's forward over packed tokens, with the task's head, returning what the runtime reduces.

    `run` returns the same on-device outputs as the padded forward's reduction (encoder.py,
    `_reduce_on_device`): pooled embeddings, first-mask logits, sequence logits, or per-token logits laid
    out [texts, longest, labels]."""

    def __init__(self, model: Any, task: str, mask_token_id: int | None = None) -> None:
        config = getattr(model, "config", None)
        model_type = str(getattr(config, "model_type", "?"))
        if model_type not in SUPPORTED_MODEL_TYPES:
            known = ", ".join(SUPPORTED_MODEL_TYPES)
            raise Unsupported(f"model type {model_type} (it knows {known})")
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise Unsupported("the model is configured as a decoder")
        self.model_type = model_type
        self.task = task
        self.mask_token_id = mask_token_id
        self.base = model.base_model
        embeddings = self.base.embeddings
        self.word = embeddings.word_embeddings
        self.position = embeddings.position_embeddings
        self.token_type = embeddings.token_type_embeddings
        self.embedding_norm = embeddings.LayerNorm
        self.padding_id = getattr(embeddings, "padding_idx", None)
        self.head = _head(model, task)  # before the layers fuse their projections: a refusal changes nothing
        self.layers = [_Layer(layer) for layer in self.base.encoder.layer]

    def run(self, batch: PackedBatch, to_device: Callable[[Array], Any], pooling: Callable[..., Any]) -> Any:
        import torch

        ids = to_device(batch.input_ids)
        positions = to_device(batch.positions(self.model_type, self.padding_id))
        types = to_device(batch.token_types) if batch.token_types is not None else None
        x = self.word(ids)
        # The model's own order of additions: words + token types, then positions.
        x = x + (self.token_type(types) if types is not None else self.token_type.weight[0])
        x = self.embedding_norm(x + self.position(positions))
        layout = _Attention(batch, to_device, x.device, x.shape[-1])
        for layer in self.layers:
            x = layer(x, layout)
        if self.task == "feature-extraction":
            padded = layout.padded(x)
            return {"pooled": pooling(padded, torch.from_numpy(batch.valid.astype(np.int64)))}
        if self.task == "token-classification":
            return {"logits": layout.padded(self.head(x)).float()}
        if self.task == "fill-mask":
            masks = to_device(batch.first_rows_of(self.mask_token_id or 0))
            return {"mask_logits": self.head(x[masks]).float()}
        first = x[to_device(batch.starts)]
        return {"logits": self.head(first[:, None, :]).float()}


class _Attention:
    """The padded views of one batch that attention runs on, built once and used by every layer.

    Attention runs per group of texts of similar lengths (`plan_attention_groups`; one group on an
    accelerator). Every group's padded block sits in one buffer: [its texts, its longest] rows, one after
    the other; `padded` (the pooling's and the token heads' view) keeps all texts in batch order."""

    def __init__(
        self, batch: PackedBatch, to_device: Callable[[Array], Any], device: Any, width: int
    ) -> None:
        import torch

        self.count, self.longest = batch.count, batch.longest
        self.rows = None if batch.uniform else to_device(batch.padded_rows)
        grouped = device.type == "cpu" and not batch.uniform
        groups = (
            plan_attention_groups(batch.lengths, ATTENTION_GROUP_COST / width)
            if grouped
            else [np.arange(batch.count)]
        )
        # (first buffer row, texts, longest, key mask or None) per group, and each packed row's buffer row.
        self.groups: list[tuple[int, int, int, Any]] = []
        first_row = np.empty(batch.count, dtype=np.int64)  # each text's first row in the buffer
        base = 0
        for members in groups:
            lengths = batch.lengths[members]
            longest = int(lengths.max())
            first_row[members] = base + np.arange(len(members)) * longest
            # Keys beyond a text's end are masked; texts of one length need no mask (as in the model's own
            # forward, which then passes none either).
            valid = np.arange(longest)[None, :] < lengths[:, None]
            mask = None if valid.all() else torch.from_numpy(valid[:, None, None, :]).to(device)
            self.groups.append((base, len(members), longest, mask))
            base += len(members) * longest
        self.buffer_rows = base
        # With one group whose texts all have one length the packed rows are the padded view itself.
        self.direct = len(self.groups) == 1 and self.groups[0][3] is None and batch.uniform
        self.places = None if self.direct else to_device(np.repeat(first_row, batch.lengths) + batch.offsets)

    def padded(self, packed: Any) -> Any:
        width = packed.shape[-1]
        if self.rows is None:
            return packed.view(self.count, self.longest, width)
        padded = packed.new_zeros(self.count * self.longest, width)
        padded[self.rows] = packed
        return padded.view(self.count, self.longest, width)

    def attend(self, query: Any, key: Any, value: Any, heads: int, size: int, scale: float) -> Any:
        """Packed [tokens, heads * size] attention output of packed query, key and value rows."""
        import torch

        attention = torch.nn.functional.scaled_dot_product_attention
        if self.direct:
            shape = (self.count, self.longest, heads, size)
            q, k, v = (t.view(shape).transpose(1, 2) for t in (query, key, value))
            return attention(q, k, v, scale=scale).transpose(1, 2).reshape(-1, heads * size)
        buffers = []
        for packed in (query, key, value):
            # Padding rows must be finite: a masked key still enters its product before the mask applies.
            buffer = packed.new_zeros(self.buffer_rows, packed.shape[-1])
            buffer[self.places] = packed
            buffers.append(buffer)
        output = query.new_empty(self.buffer_rows, heads * size)
        for base, texts, longest, mask in self.groups:
            block = slice(base, base + texts * longest)
            shape = (texts, longest, heads, size)
            q, k, v = (buffer[block].view(shape).transpose(1, 2) for buffer in buffers)
            context = attention(q, k, v, attn_mask=mask, scale=scale)
            output[block].view(shape).copy_(context.transpose(1, 2))
        return output[self.places]


class _Layer:
    """One encoder layer over packed rows, through the layer's own modules."""

    def __init__(self, layer: Any) -> None:
        import torch

        attention = layer.attention.self
        self.heads = int(attention.num_attention_heads)
        self.head_size = int(attention.attention_head_size)
        self.scaling = float(getattr(attention, "scaling", self.head_size**-0.5))
        self.projections = (attention.query, attention.key, attention.value)
        self.output_dense = layer.attention.output.dense
        self.output_norm = layer.attention.output.LayerNorm
        self.intermediate = layer.intermediate
        self.ffn_dense = layer.output.dense
        self.ffn_norm = layer.output.LayerNorm
        # In float32 the three projections run as one product over a fused weight whose slices become the
        # modules' own weights (no second copy). Other dtypes keep the model's three products, so that
        # their rounding stays the model's own.
        self.fused: tuple[Any, Any] | None = None
        linear = torch.nn.Linear
        if all(type(p) is linear and p.weight.dtype == torch.float32 for p in self.projections):
            weight = torch.cat([p.weight.detach() for p in self.projections])
            bias = torch.cat([p.bias.detach() for p in self.projections])
            size = self.projections[0].weight.shape[0]
            for index, projection in enumerate(self.projections):
                projection.weight.data = weight[index * size : (index + 1) * size]
                projection.bias.data = bias[index * size : (index + 1) * size]
            self.fused = (weight, bias)

    def __call__(self, x: Any, layout: _Attention) -> Any:
        import torch

        functional = torch.nn.functional
        if self.fused is not None:
            query, key, value = functional.linear(x, *self.fused).chunk(3, dim=-1)
        else:
            query, key, value = (projection(x) for projection in self.projections)
        context = layout.attend(query, key, value, self.heads, self.head_size, self.scaling)
        x = self.output_norm(self.output_dense(context) + x)
        return self.ffn_norm(self.ffn_dense(self.intermediate(x)) + x)


def _head(model: Any, task: str) -> Callable[[Any], Any]:
    """The task's head of the model, as the model's own forward applies it (dropout is off at inference)."""
    name = type(model).__name__
    if task == "feature-extraction":
        return lambda x: x
    if task in ("text-classification", "text-ranking"):
        if name == "BertForSequenceClassification":
            pooler, classifier = model.bert.pooler, model.classifier
            return lambda first: classifier(pooler(first))
        if name in ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"):
            head: Callable[[Any], Any] = model.classifier
            return head
    if task == "token-classification" and name.endswith("ForTokenClassification"):
        token_head: Callable[[Any], Any] = model.classifier
        return token_head
    if task == "fill-mask":
        if name == "BertForMaskedLM":
            bert_head: Callable[[Any], Any] = model.cls
            return bert_head
        if name in ("RobertaForMaskedLM", "XLMRobertaForMaskedLM"):
            roberta_head: Callable[[Any], Any] = model.lm_head
            return roberta_head
    raise Unsupported(f"{name} serving {task} (no unpadded head for this class)")


def agreement_tolerance(dtype_name: str, quantized: bool) -> float:
    return AGREEMENT["float32" if dtype_name == "float32" and not quantized else "other"]
