"""Models for the Resonance RoPE reference: the tiny PosGen Transformer (Sec. 6.1, App. C.1) and a
from-scratch LLaMA with its checkpoint loader (Sec. 6.2, App. C.2). Position encodings come from resonance.py.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
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


class TinyAttention(nn.Module):
    """Causal multi-head self-attention with RoPE on q and k (Eq. 4-5), no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # one matmul for q, k and v
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

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
        self.drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_drop(self.wo(self.drop(F.relu(self.wi(x)))))


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
        self.drop = nn.Dropout(cfg.dropout)
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
        device = self.tok_emb.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
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
