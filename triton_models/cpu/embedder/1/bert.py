"""A numpy forward pass of the BERT encoder behind sentence-transformers/all-MiniLM-L6-v2.

`MiniLM.encode` returns what `SentenceTransformer("all-MiniLM-L6-v2").encode(...,
normalize_embeddings=False)` returns for that model, whose own pipeline already ends in a
Normalize module: the mean of the last hidden states over the attention mask, L2-normalized.

The pieces, in the order the forward pass uses them:

* tokenization: `tokenizers.Tokenizer` from the model's `tokenizer.json` (lower-casing BERT
  WordPiece), truncated to `max_seq_length` tokens (256, from `sentence_bert_config.json`)
  and padded to the longest text of the batch. The file itself asks for truncation and
  fixed padding at 128; both are overridden here, as sentence-transformers does.
* embeddings: word + absolute position + token type 0, then LayerNorm.
* `num_hidden_layers` post-LayerNorm encoder layers: multi-head self-attention with padded
  keys masked out, then a GELU (exact, erf-based) feed-forward block.
* mean pooling over the attention mask, then L2 normalization.

The batch is padded to its longest text, but only attention sees the padding: between
attention blocks the hidden states are packed to the real tokens (`TokenLayout`), so the dense
layers, most of the work, cost what the batch's real tokens cost.

Weights come from `model.safetensors` via `safetensors.numpy`; matrix products stay in
float32, and linear weights are stored transposed (`[in, out]`) so that `x @ w` is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

# Rational approximation erf(z) ~ z * P(z^2) / Q(z^2) on [-4, 4] (the one Eigen and XLA use
# for float32); outside that range erf(z) is +-1 to within 1.6e-8. Evaluated in float64 it is
# within 6.5e-8 of the true erf everywhere. Coefficients are listed highest degree first.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_ERF_CLAMP = 4.0
_INV_SQRT2 = 0.7071067811865476
# Rows of a [tokens, features] activation handled at a time by `gelu_`: small enough for the
# float64 temporaries to stay in cache, which makes the element-wise work ~3x faster.
_GELU_BLOCK_ROWS = 32
# Added to the attention scores of padded keys, as transformers does (dtype minimum).
_MASK_BIAS = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class BertConfig:
    """The few fields of a Hugging Face BERT `config.json` that the forward pass needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    pad_token_id: int

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {raw['hidden_act']!r}: only exact gelu")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
            max_position_embeddings=int(raw["max_position_embeddings"]),
            pad_token_id=int(raw.get("pad_token_id", 0)),
        )


@dataclass(frozen=True)
class LayerWeights:
    """One encoder layer; linear weights are `[in, out]`, query/key/value fused."""

    qkv_w: np.ndarray  # [hidden, 3 * hidden]
    qkv_b: np.ndarray  # [3 * hidden]
    attn_out_w: np.ndarray  # [hidden, hidden]
    attn_out_b: np.ndarray
    attn_ln_g: np.ndarray
    attn_ln_b: np.ndarray
    ffn_in_w: np.ndarray  # [hidden, intermediate]
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray  # [intermediate, hidden]
    ffn_out_b: np.ndarray
    ffn_ln_g: np.ndarray
    ffn_ln_b: np.ndarray


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, element-wise, as float64 (absolute error below 1e-7)."""
    z = np.clip(np.asarray(x, dtype=np.float64), -_ERF_CLAMP, _ERF_CLAMP)
    z2 = z * z
    p = z2 * _ERF_P[0]
    p += _ERF_P[1]
    for coef in _ERF_P[2:]:
        p *= z2
        p += coef
    q = z2 * _ERF_Q[0]
    q += _ERF_Q[1]
    for coef in _ERF_Q[2:]:
        q *= z2
        q += coef
    p *= z
    p /= q
    return p


def gelu_(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2, in place on a float32 array; returns `x`."""
    rows = x.reshape(-1, x.shape[-1])
    for start in range(0, rows.shape[0], _GELU_BLOCK_ROWS):
        block = rows[start : start + _GELU_BLOCK_ROWS]
        phi = erf(block * _INV_SQRT2)
        phi += 1.0
        phi *= 0.5
        np.multiply(block, phi, out=block, casting="same_kind")
    return x


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, as torch computes it)."""
    mean = x.mean(axis=-1, keepdims=True)
    centered: np.ndarray = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    centered *= 1.0 / np.sqrt(var + np.float32(eps))
    centered *= gamma
    centered += beta
    return centered


def softmax_(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place; returns `x`."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


@dataclass(frozen=True)
class TokenLayout:
    """Where the real tokens of a right-padded batch sit.

    Hidden states are kept packed, `[tokens, hidden]` with the padding dropped, so that the
    dense layers (most of the work) never compute on padding; only attention scatters them
    back onto the `[batch, seq]` grid, where padded keys are masked out.
    """

    batch: int
    seq: int
    index: np.ndarray  # [tokens]: each real token's place in the flattened [batch * seq] grid
    lengths: np.ndarray  # [batch]: real tokens per sequence
    mask_bias: np.ndarray  # [batch, 1, 1, seq]: 0 for real keys, float32 min for padding

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> TokenLayout:
        batch, seq = mask.shape
        real = mask.astype(bool)
        mask_bias = np.where(real, np.float32(0.0), np.float32(_MASK_BIAS))
        return cls(
            batch=batch,
            seq=seq,
            index=np.flatnonzero(real),
            lengths=real.sum(axis=1),
            mask_bias=mask_bias[:, None, None, :].astype(np.float32),
        )


def self_attention(
    h: np.ndarray, layout: TokenLayout, w: LayerWeights, num_heads: int
) -> np.ndarray:
    """Multi-head self-attention over packed hidden states `h` [tokens, hidden]."""
    hidden = h.shape[1]
    head_dim = hidden // num_heads
    qkv = h @ w.qkv_w
    qkv += w.qkv_b
    grid = np.zeros((layout.batch * layout.seq, 3 * hidden), dtype=np.float32)
    grid[layout.index] = qkv
    # [batch, seq, 3, heads, head_dim] -> three [batch, heads, seq, head_dim]
    q, k, v = grid.reshape(layout.batch, layout.seq, 3, num_heads, head_dim).transpose(
        2, 0, 3, 1, 4
    )
    scores = q @ k.transpose(0, 1, 3, 2)
    scores *= np.float32(1.0 / np.sqrt(head_dim))
    scores += layout.mask_bias
    context = softmax_(scores) @ v  # [batch, heads, seq, head_dim]
    context = context.transpose(0, 2, 1, 3).reshape(layout.batch * layout.seq, hidden)
    out: np.ndarray = context[layout.index] @ w.attn_out_w
    out += w.attn_out_b
    return out


def encoder_layer(
    h: np.ndarray, layout: TokenLayout, w: LayerWeights, config: BertConfig
) -> np.ndarray:
    """One post-LayerNorm BERT layer: attention + residual + LN, FFN + residual + LN."""
    attn = self_attention(h, layout, w, config.num_attention_heads)
    attn += h
    h = layer_norm(attn, w.attn_ln_g, w.attn_ln_b, config.layer_norm_eps)
    inter = h @ w.ffn_in_w
    inter += w.ffn_in_b
    ffn = gelu_(inter) @ w.ffn_out_w
    ffn += w.ffn_out_b
    ffn += h
    return layer_norm(ffn, w.ffn_ln_g, w.ffn_ln_b, config.layer_norm_eps)


def _load_layers(weights: dict[str, np.ndarray], config: BertConfig) -> list[LayerWeights]:
    def linear_w(name: str) -> np.ndarray:
        # torch Linear stores [out, in]; keep [in, out] contiguous for `x @ w`.
        return np.ascontiguousarray(weights[f"{name}.weight"].T, dtype=np.float32)

    def vec(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32)

    layers: list[LayerWeights] = []
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"
        attn = f"{p}.attention.self"
        layers.append(
            LayerWeights(
                qkv_w=np.concatenate(
                    [linear_w(f"{attn}.{n}") for n in ("query", "key", "value")], axis=1
                ),
                qkv_b=np.concatenate([vec(f"{attn}.{n}.bias") for n in ("query", "key", "value")]),
                attn_out_w=linear_w(f"{p}.attention.output.dense"),
                attn_out_b=vec(f"{p}.attention.output.dense.bias"),
                attn_ln_g=vec(f"{p}.attention.output.LayerNorm.weight"),
                attn_ln_b=vec(f"{p}.attention.output.LayerNorm.bias"),
                ffn_in_w=linear_w(f"{p}.intermediate.dense"),
                ffn_in_b=vec(f"{p}.intermediate.dense.bias"),
                ffn_out_w=linear_w(f"{p}.output.dense"),
                ffn_out_b=vec(f"{p}.output.dense.bias"),
                ffn_ln_g=vec(f"{p}.output.LayerNorm.weight"),
                ffn_ln_b=vec(f"{p}.output.LayerNorm.bias"),
            )
        )
    return layers


class MiniLM:
    """Sentence embeddings from a sentence-transformers BERT model directory, in numpy."""

    def __init__(
        self,
        config: BertConfig,
        tokenizer: Tokenizer,
        weights: dict[str, np.ndarray],
        max_seq_length: int,
    ) -> None:
        if max_seq_length > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {max_seq_length} exceeds the model's "
                f"{config.max_position_embeddings} positions"
            )
        self.config = config
        self.max_seq_length = max_seq_length
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        pad_token = tokenizer.id_to_token(config.pad_token_id) or "[PAD]"
        self.tokenizer.enable_padding(pad_id=config.pad_token_id, pad_token=pad_token)
        self.word_embeddings = np.asarray(
            weights["embeddings.word_embeddings.weight"], dtype=np.float32
        )
        self.position_embeddings = np.asarray(
            weights["embeddings.position_embeddings.weight"], dtype=np.float32
        )
        self.token_type_embedding = np.asarray(
            weights["embeddings.token_type_embeddings.weight"][0], dtype=np.float32
        )
        self.embeddings_ln_g = np.asarray(weights["embeddings.LayerNorm.weight"], np.float32)
        self.embeddings_ln_b = np.asarray(weights["embeddings.LayerNorm.bias"], np.float32)
        self.layers = _load_layers(weights, config)

    @property
    def dimension(self) -> int:
        return self.config.hidden_size

    @classmethod
    def from_dir(cls, path: str | Path, max_seq_length: int | None = None) -> MiniLM:
        """Load a sentence-transformers model directory (config, tokenizer, safetensors).

        `max_seq_length` defaults to the directory's `sentence_bert_config.json` (256 for
        all-MiniLM-L6-v2), else to the model's number of positions.
        """
        root = Path(path)
        config = BertConfig.from_json(root / "config.json")
        if max_seq_length is None:
            st_config = root / "sentence_bert_config.json"
            if st_config.is_file():
                raw = json.loads(st_config.read_text(encoding="utf-8"))
                max_seq_length = int(raw["max_seq_length"])
            else:
                max_seq_length = config.max_position_embeddings
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        weights = load_file(str(root / "model.safetensors"))
        return cls(config, tokenizer, weights, max_seq_length)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both int64 [batch, longest text in tokens]."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def forward(self, ids: np.ndarray, layout: TokenLayout) -> np.ndarray:
        """Last hidden states of the real tokens, packed: float32 [tokens, hidden]."""
        positions = np.broadcast_to(np.arange(layout.seq), ids.shape).reshape(-1)
        h = self.word_embeddings[ids.reshape(-1)[layout.index]]
        h += self.position_embeddings[positions[layout.index]]
        h += self.token_type_embedding
        h = layer_norm(h, self.embeddings_ln_g, self.embeddings_ln_b, self.config.layer_norm_eps)
        for layer in self.layers:
            h = encoder_layer(h, layout, layer, self.config)
        return h

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalized mean-pooled embeddings, float32 [len(texts), hidden]."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids, mask = self.tokenize(texts)
        layout = TokenLayout.from_mask(mask)
        hidden = self.forward(ids, layout)
        # Packed tokens come sequence after sequence; every sequence has [CLS] and [SEP].
        starts = np.concatenate(([0], np.cumsum(layout.lengths)[:-1]))
        pooled: np.ndarray = np.add.reduceat(hidden, starts, axis=0) / layout.lengths[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalized: np.ndarray = pooled / np.maximum(norms, 1e-12)
        return normalized.astype(np.float32)
