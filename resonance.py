"""RoPE, its scalings, and Resonance RoPE (Wang et al., 2024), as pure functions on torch tensors.

Each function names the equation, algorithm or section it implements, uses the paper's symbols, and needs only
``math`` and ``torch`` (``PE``, one position encoding by name, composes the others).

Symbols
    d        head dimension (``dim``); there are d/2 RoPE *features*, j = 0 … d/2−1, each a pair of dimensions
    b        rotary base (``base``)
    θ_j      angular frequency of feature j, ``inv_freq[j]`` (Eq. 1)
    λ_j      wavelength 2π/θ_j (Eq. 7); λ̃_j its Resonance rounding (Alg. 1)
    L, L'    training and test lengths (``train_len``, ``test_len``); s = L'/L the scaling factor (``factor``)
    c        critical dimension: the number of pre-critical features, those with λ_j < L (Sec. 3.2)
    α, β, γ_j  YaRN's ramp (Sec. 3.3)

Command line, a per-feature report of wavelengths and feature gaps:

    python resonance.py --dim 128 --base 10000 --train-len 4096 --test-len 32768 --pe yarn:8
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

METHODS = ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "llama3")  # by name; "longrope" takes per-feature factors
RAMPS = ("paper", "index")


def rope_inv_freq(dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE's angular frequencies θ_j = b^(−2j/d), j = 0 … d/2−1 (Eq. 1): shape (d/2,), float64, decreasing."""
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even integer, got {dim!r}")
    if not 1 < base < math.inf:
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    j = torch.arange(dim // 2, dtype=torch.float64)
    return base ** (-2.0 * j / dim)


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """λ_j = 2π/θ_j (Eq. 7): the tokens after which feature j's angle m·θ_j comes round. For LLaMA (d=128,
    b=10000) they run from 2π ≈ 6.28 (j=0) to 2π·10000^(126/128) ≈ 54410.14 (j=63)."""
    return 2 * math.pi / inv_freq.to(torch.float64)


def critical_dim(inv_freq: torch.Tensor, train_len: int) -> int:
    """c, the number of pre-critical features: those with λ_j < L (Sec. 3.2).

    Features j < c are *pre-critical*: they see every rotary angle of their period during training; their
    dimensions are 0 … 2c−1. The PosGen model (d=64, b=10000, L=64) has c = 9 of 32, dimensions 0 … 17
    (Sec. 6.1.1's "the first 17" is the last index 2c−1 = 17); LLaMA (d=128, L=4096) has 46 of 64 (Sec. 1).
    """
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    return int((wavelengths(inv_freq) < train_len).sum())


def resonance(inv_freq: torch.Tensor) -> torch.Tensor:
    """Resonance RoPE, Algorithm 1: λ̃_j = round(λ_j), θ̃_j = 2π/λ̃_j.

    Each feature then repeats exactly every λ̃_j tokens, so on pre-critical features (λ̃_j < L) every test
    position shows a rotary angle already seen in training (Theorem 1). A wavelength below 1/2 would round
    to 0 (an infinite frequency); we clamp λ̃ to at least 1 (a feature that is constant over integer positions).
    θ may be any RoPE or scaled-RoPE frequencies; θ̃ is float64 of the same shape.
    """
    lam_tilde = torch.round(wavelengths(inv_freq)).clamp_min(1.0)
    return 2 * math.pi / lam_tilde


def integer_wavelengths(inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ̃, integer): each wavelength rounded (at least 1), float64, and whether λ_j is that integer up to float64
    rounding (|λ − λ̃| ≤ 1e-12·λ): Alg. 1's θ̃ = 2π/λ̃ in float64 gives λ̃ back to about 1e-16. A θ̃ stored in
    float32 does not count (it is no longer 2π/λ̃), nor does a plain θ that happens to lie near an integer λ."""
    lam = wavelengths(inv_freq)
    lam_tilde = torch.round(lam).clamp_min(1.0)
    return lam_tilde, (lam - lam_tilde).abs() <= 1e-12 * lam


def linear_inv_freq(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Position Interpolation (Chen et al., 2023): θ_j/s, the same as dividing every position m by s."""
    if not 1 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    return inv_freq.to(torch.float64) / factor


def ntk_inv_freq(dim: int, base: float, factor: float) -> torch.Tensor:
    """NTK-aware scaling (bloc97, 2023; App. C.2): RoPE with the base b replaced by b·s^(d/(d−2)).

    The exponent d/(d−2) makes the lowest frequency θ_{d/2−1} exactly θ_{d/2−1}/s (interpolated like PI)
    while θ_0 is unchanged (extrapolated): a smooth blend in between.
    """
    if not isinstance(dim, int) or dim <= 2 or dim % 2:
        raise ValueError(f"dim must be an even integer > 2, got {dim!r}")
    if not 1 < base < math.inf:
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    if not 1 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    return rope_inv_freq(dim, base * factor ** (dim / (dim - 2)))


def dynamic_ntk_inv_freq(dim: int, base: float, train_len: int, seq_len: int, factor: float = 1.0) -> torch.Tensor:
    """Dynamic NTK-aware scaling (App. C.2; HF ``rope_type="dynamic"``): NTK-aware scaling whose factor follows
    the current length L_c = max(seq_len, L), s' = s·L_c/L − (s − 1). With the default s = 1 that is
    s' = L_c/L, the paper's description; below L it is plain RoPE.
    """
    if not train_len > 0 or not seq_len > 0:
        raise ValueError(f"train_len and seq_len must be > 0, got {train_len!r}, {seq_len!r}")
    if not 1 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    return ntk_inv_freq(dim, base, factor * max(seq_len, train_len) / train_len - (factor - 1))


def yarn_inv_freq(dim: int, base: float, train_len: int, factor: float, alpha: float = 1.0,
                  beta: float = 32.0, ramp: str = "paper") -> torch.Tensor:
    """YaRN's "NTK-by-parts" frequencies (Peng et al., 2024; Sec. 3.3).

    ``ramp="paper"`` is Sec. 3.3 as printed: with λ_j = 2π/θ_j,
        γ_j = 1 if λ_j < L/β;  0 if λ_j > L/α;  (L/λ_j − α)/(β − α) otherwise,
        λ̂_j = (1 − γ_j)·s·λ_j + γ_j·λ_j,
    so short wavelengths (γ=1) are kept, long ones (γ=0) are interpolated by s, and the ramp is linear in
    L/λ_j (the number of rotations a feature makes over L). Note the paper blends *wavelengths*; YaRN's code
    blends *frequencies*; the two agree where γ_j ∈ {0, 1}.

    ``ramp="index"`` is YaRN's released code and HF ``rope_type="yarn"``: the correction range is the
    feature indices where a feature makes β (``beta_fast``) down to α (``beta_slow``) rotations over L, floored
    and ceiled to integers; the ramp is linear in the feature *index* between them, and
    θ̂_j = (1 − γ_j)·θ_j/s + γ_j·θ_j.

    α < β are rotation counts bounding the ramp (α=1, β=32 for LLaMA). Returns θ̂, float64, shape (d/2,);
    s = 1 gives plain RoPE.
    """
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not 1 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    if not 0 < alpha < beta < math.inf:
        raise ValueError(f"alpha and beta must satisfy 0 < alpha < beta, got alpha={alpha!r}, beta={beta!r}")
    theta = rope_inv_freq(dim, base)  # checks d and b
    j = torch.arange(dim // 2, dtype=torch.float64)
    if ramp == "paper":
        rotations = train_len * theta / (2 * math.pi)  # L/λ_j
        gamma = ((rotations - alpha) / (beta - alpha)).clamp(0.0, 1.0)
        lam = 2 * math.pi / theta
        return 2 * math.pi / ((1 - gamma) * factor * lam + gamma * lam)
    if ramp == "index":
        def correction_dim(rotations: float) -> float:
            # the (fractional) feature index whose wavelength fits `rotations` times into L
            return dim * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta)), 0)
        high = min(math.ceil(correction_dim(alpha)), dim - 1)
        if low == high:
            high += 0.001  # as YaRN: avoid a zero-width ramp
        gamma = 1 - ((j - low) / (high - low)).clamp(0.0, 1.0)
        return (1 - gamma) * theta / factor + gamma * theta
    raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")


def llama3_inv_freq(dim: int, base: float, train_len: int, factor: float, low: float = 1.0,
                    high: float = 4.0) -> torch.Tensor:
    """Llama 3.1's scaling (HF ``rope_type="llama3"``): YaRN's ramp in rotations r_j = L/λ_j, blending
    frequencies, without a temperature: θ̂_j = (1 − γ_j)·θ_j/s + γ_j·θ_j, γ_j = clamp((r_j − low)/(high − low)).
    Features making fewer than ``low`` rotations over L are interpolated, more than ``high`` kept (1 and 4 in
    Llama 3.1)."""
    if not train_len > 0 or not 1 <= factor < math.inf or not 0 < low < high < math.inf:
        raise ValueError(f"train_len must be > 0, factor >= 1 and 0 < low < high, got {train_len!r}, {factor!r}, "
                         f"{low!r}, {high!r}")
    theta = rope_inv_freq(dim, base)
    gamma = ((train_len * theta / (2 * math.pi) - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - gamma) * theta / factor + gamma * theta


def longrope_inv_freq(dim: int, base: float, factors) -> torch.Tensor:
    """LongRoPE's per-feature rescaling (HF ``rope_type="longrope"``, llama.cpp's ``rope_freqs``): θ_j / f_j. Any
    frequencies θ̃ are this with f_j = θ_j/θ̃_j, which is how a Resonance model is written for stock runtimes."""
    theta, f = rope_inv_freq(dim, base), torch.as_tensor(factors, dtype=torch.float64).reshape(-1)
    if f.numel() != theta.numel() or not bool(torch.isfinite(f).all() and (f > 0).all()):
        raise ValueError(f"factors must be {theta.numel()} finite numbers > 0 (one per feature), got {f.numel()}")
    return theta / f


def yarn_mscale(factor: float) -> float:
    """YaRN's attention temperature √(1/t) = 0.1·ln s + 1 (1 for s ≤ 1). It multiplies both cos and sin, so q
    and k each get it once and the logits q·k get it squared (1/t)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


@dataclasses.dataclass(frozen=True)
class PE:
    """A position encoding of the paper, spelled ``[res_]METHOD[:FACTOR]``: "rope", "res_rope", "yarn:4",
    "res_yarn:4", "ntk:2", "dynamic_ntk" (``PE.parse``; ``str(pe)`` gives the spelling back).

    method: one of METHODS or "longrope"; factor: s (1 for "rope"); resonance: Alg. 1 after the scaling;
    original_len: L, the context the scaling starts from (None: the model's); alpha, beta, ramp: YaRN's α, β (HF
    ``beta_slow``, ``beta_fast``; 1 and 32 as for LLaMA, App. C.2) and ramp ("index": YaRN's code and HF; "paper":
    Sec. 3.3); for "llama3" α, β are ``low_freq_factor``, ``high_freq_factor`` (``parse`` gives 1 and 4).
    "longrope" (loaded from a config, not spelled): θ_j / f_j with f = ``short_factor`` up to L and
    ``long_factor`` beyond (HF's rule), times ``attention_factor`` (None: HF's √(1 + ln s / ln L)).
    """

    method: str = "rope"
    factor: float = 1.0
    resonance: bool = False
    original_len: int | None = None
    alpha: float = 1.0
    beta: float = 32.0
    ramp: str = "index"
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float | None = None

    def __post_init__(self):
        if self.method not in (*METHODS, "longrope"):
            raise ValueError(f"method must be one of {(*METHODS, 'longrope')}, got {self.method!r}")
        if (self.method == "longrope") != (self.short_factor is not None and self.long_factor is not None):
            raise ValueError("short_factor and long_factor are given for method 'longrope', and only for it")
        if self.attention_factor is not None and not 0 < self.attention_factor < math.inf:
            raise ValueError(f"attention_factor must be a finite number > 0 or None, got {self.attention_factor!r}")
        if not 1 <= self.factor < math.inf or (self.method == "rope" and self.factor != 1):
            raise ValueError(f"factor must be a finite number >= 1 (1 for rope), got {self.factor!r}")
        L = self.original_len
        if L is not None and (isinstance(L, bool) or not isinstance(L, int) or L <= 0):
            raise ValueError(f"original_len must be a positive integer or None, got {L!r}")
        if not 0 < self.alpha < self.beta < math.inf:
            raise ValueError(f"alpha and beta must satisfy 0 < alpha < beta < inf, got {self.alpha!r}, {self.beta!r}")
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {RAMPS}, got {self.ramp!r}")

    @classmethod
    def parse(cls, spec: str | PE, **fields) -> PE:
        """``PE.parse("res_yarn:4")``; ``fields`` sets the others (original_len, alpha, beta, ramp; None: the
        method's default, e.g. β = 32 for YaRN, 4 for Llama 3)."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if isinstance(spec, PE):
            return dataclasses.replace(spec, **fields)
        name, colon, factor = str(spec).partition(":")
        method = name.removeprefix("res_")
        if method not in METHODS:
            raise ValueError(f"pe must be [res_]METHOD[:FACTOR] with METHOD one of {METHODS}, got {spec!r}")
        try:
            s = float(factor) if colon else 1.0
        except ValueError:
            raise ValueError(f"pe {spec!r}: the factor must be a number, got {factor!r}") from None
        defaults = {"beta": 4.0} if method == "llama3" else {}
        return cls(method, s, name.startswith("res_"), **(defaults | fields))

    def __str__(self) -> str:
        return f"{'res_' if self.resonance else ''}{self.method}" + (f":{self.factor:g}" if self.factor != 1 else "")

    def label(self) -> str:
        """A name for tables and plots: "RoPE", "Res. YaRN s=4", …"""
        names = {"rope": "RoPE", "linear": "PI", "ntk": "NTK-aware", "dynamic_ntk": "Dynamic NTK", "yarn": "YaRN",
                 "llama3": "Llama 3", "longrope": "LongRoPE"}
        name = ("Res. " if self.resonance else "") + names[self.method]
        return name if self.factor == 1 else f"{name} s={self.factor:g}"

    def inv_freq(self, dim: int, base: float, train_len: int | None = None,
                 seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """(θ, mscale) for head dimension d = ``dim`` and base b: Eq. 1 or its scaling, then Alg. 1 if
        ``resonance``; mscale is YaRN's temperature (1 otherwise). L is ``original_len``, else ``train_len``
        (the model's context); ``seq_len`` is Dynamic NTK's current length L_c (default L)."""
        L = self.original_len or train_len
        if L is None:
            raise ValueError(f"pe {self}: original_len is not set and no train_len was given")
        s = self.factor
        theta = {"rope": lambda: rope_inv_freq(dim, base),
                 "linear": lambda: linear_inv_freq(rope_inv_freq(dim, base), s),
                 "ntk": lambda: ntk_inv_freq(dim, base, s),
                 "dynamic_ntk": lambda: dynamic_ntk_inv_freq(dim, base, L, seq_len or L, s),
                 "yarn": lambda: yarn_inv_freq(dim, base, L, s, self.alpha, self.beta, self.ramp),
                 "llama3": lambda: llama3_inv_freq(dim, base, L, s, self.alpha, self.beta),
                 "longrope": lambda: longrope_inv_freq(dim, base, self.long_factor if (seq_len or L) > L
                                                       else self.short_factor)}[self.method]()
        theta = resonance(theta) if self.resonance else theta
        if self.method == "longrope":
            return theta, self.attention_factor or (math.sqrt(1 + math.log(s) / math.log(L)) if s > 1 else 1.0)
        return theta, yarn_mscale(s) if self.method == "yarn" else 1.0


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, mscale: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(n·θ_j) and sin(n·θ_j) tables (the entries of R_{Θ,n}, Eq. 2-3), times ``mscale``.

    A feature with an integer wavelength λ̃ (Resonance, Alg. 1; ``integer_wavelengths``) takes the angle of the
    residue n mod λ̃, 2π·(n mod λ̃)/λ̃ in float64, so the table is *exactly* periodic: row n is bit-identical to
    row n mod λ̃ for any integer position. This is Theorem 1 made true in floating point, where n·θ̃ itself would
    drift. Other features take n·θ_j in float64. Cos and sin are evaluated once per table entry, then gathered: a
    feature whose period fits in the table has one period of entries, any other feature one entry per row.
    Everything is cast to ``dtype`` at the end (never form angles in fp16/bf16: their integers are not exact past
    2048/256).

    θ has shape (F,) with F = d/2, ``positions`` n shape (N,); cos and sin have shape (N, F).
    """
    if positions.dim() != 1 or positions.is_floating_point():
        raise ValueError(f"positions must be a 1-D integer tensor, got shape {tuple(positions.shape)} "
                         f"and dtype {positions.dtype}")
    theta = inv_freq.to(torch.float64).reshape(-1)
    n = positions.to(torch.int64)
    N, F = n.numel(), theta.numel()
    period, integer = integer_wavelengths(theta)
    period = period.to(torch.int64)
    short = integer & (period <= N)  # one period is no longer than the table
    size = torch.where(short, period, N)  # table entries per feature
    offset = torch.cumsum(size, 0) - size
    f = torch.repeat_interleave(torch.arange(F), size)  # the feature of each table entry
    t = torch.arange(int(size.sum())) - offset[f]  # its index among that feature's entries
    k = torch.where(short[f], t, n[t])  # a residue, or the position of row t
    k = torch.where(integer[f], torch.remainder(k, period[f]), k)
    angle = k.to(torch.float64) * torch.where(integer, 2 * math.pi / period.to(torch.float64), theta)[f]
    # int32 indices where they fit: the remainder over N × F entries is the costly step
    it = torch.int32 if N and n.abs().max() < 2**31 and size.sum() < 2**31 else torch.int64
    idx = torch.remainder(n[:, None].to(it), period.to(it))
    if not short.all():
        idx = torch.where(short, idx, torch.arange(N, dtype=it)[:, None])
    idx = idx.add_(offset.to(it)).view(-1)
    return tuple((g(angle) * mscale).to(dtype).index_select(0, idx).view(N, F) for g in (torch.cos, torch.sin))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotate the last dimension of q or k by R_{Θ,n} (Eq. 4-5).

    x is (..., T, d); cos and sin are (T, d/2) tables from ``rope_cos_sin``, any mscale already in them (so it
    reaches q once and k once). ``layout="half"`` pairs dimension j with j + d/2 (HF / GPT-NeoX "rotate half");
    "interleaved" pairs 2j with 2j+1 (the paper's [2j : 2j+1], Meta's llama, llama.cpp). The result has x's
    shape and dtype; the rotation is done in at least float32.
    """
    d = x.shape[-1]
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[-1] * 2 != d or cos.shape[0] != x.shape[-2]:
        raise ValueError(f"cos and sin must have shape (T, d/2) = ({x.shape[-2]}, {d // 2}) to match x of "
                         f"shape {tuple(x.shape)}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    compute = torch.promote_types(x.dtype, torch.float32)
    xf, c, s = x.to(compute), cos.to(compute), sin.to(compute)
    if layout == "half":
        x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    elif layout == "interleaved":
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    else:
        raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
    return out.to(x.dtype)


def feature_gap(inv_freq: torch.Tensor, train_len: int, test_len: int) -> torch.Tensor:
    """The feature gap h_j of Eq. 8, per feature j, for a unit feature pair.

        h_j = max_{n ∈ [L, L')} min_{m ∈ [0, L)} 2·|sin((n − m)·θ_j / 2)|

    i.e. for every OOD position n, the chord distance on the unit circle from its rotary angle n·θ_j to the
    nearest angle seen in training, and the worst n (max over x of one coordinate's difference is this chord).
    Theorem 1: it is 0 on Resonance's pre-critical features. Computed by sorting the L training angles and
    locating each OOD angle with ``searchsorted``; memory is O(L + L') per feature, never L × L'. Integer
    wavelengths are reduced exactly (n mod λ̃) so a gap of 0 is exactly 0. Returns h, float64, shape (d/2,).
    """
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not test_len > train_len:
        raise ValueError(f"test_len must be > train_len = {train_len}, got {test_len!r}")
    theta = inv_freq.to(torch.float64).reshape(-1, 1)
    lam_tilde, periodic = integer_wavelengths(theta)
    period = torch.where(periodic, lam_tilde, torch.ones_like(lam_tilde))

    def angles(n: torch.Tensor) -> torch.Tensor:  # n·θ mod 2π, exact for integer wavelengths
        nf = n.to(torch.float64)[None, :]
        exact = 2 * math.pi * torch.remainder(nf, period) / period
        return torch.where(periodic, exact, torch.remainder(nf * theta, 2 * math.pi))

    seen = angles(torch.arange(train_len)).sort(dim=1).values                 # (F, L)
    test = angles(torch.arange(train_len, test_len))                           # (F, L' − L)
    # wrap around the circle: a copy of the last angle below 0 and of the first above 2π
    seen = torch.cat((seen[:, -1:] - 2 * math.pi, seen, seen[:, :1] + 2 * math.pi), dim=1)
    i = torch.searchsorted(seen, test)
    delta = torch.minimum(test - seen.gather(1, i - 1), seen.gather(1, i) - test).clamp_min(0.0)
    return (2 * torch.sin(delta / 2)).amax(dim=1)


# ----------------------------------------------------------------------------------------------------------
# The command line, and the argument layer every script shares: a value is checked as it is parsed, before
# anything is loaded; a user mistake is one line on stderr, exit 2.


class Parser(argparse.ArgumentParser):
    """argparse that reports a user mistake in one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind: type, low: float, high: float = math.inf) -> Callable[[str], int | float]:
    """An argparse type: an int or a float in [low, high]."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value
    return parse


class Distinct(argparse.Action):
    """For nargs="+": the values, each given once (a repeated seed would train and count one run twice)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if repeated := [v for i, v in enumerate(values) if v in values[:i]]:
            raise argparse.ArgumentError(self, f"repeats {repeated[0]}")
        setattr(namespace, self.dest, values)


def device(name: str) -> torch.device:
    """An argparse type: a device torch knows and this machine has."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {name!r} (cpu, cuda, cuda:N, mps)") from None
    backend = getattr(torch, dev.type, None)
    if dev.type != "cpu" and not (backend is not None and backend.is_available()):
        raise argparse.ArgumentTypeError(f"device {name!r} is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def path_for(kind: str) -> Callable[[str], str]:
    """An argparse type: a path where a ``kind`` ("file" or "dir") will be written ("" for none)."""
    def parse(text: str) -> str:
        p = Path(text)
        if text and p.exists() and p.is_dir() != (kind == "dir"):
            raise argparse.ArgumentTypeError(f"{text} is a {'file' if kind == 'dir' else 'directory'}, not a {kind}")
        parent = next((q for q in p.absolute().parents if q.exists()), None)
        if text and parent is not None and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a directory")
        return text
    return parse


def boolean(text: str) -> bool:
    """An argparse type: true or false."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def pe_spelling(text: str) -> str:
    """An argparse type: a PE spelled ``[res_]METHOD[:FACTOR]``, checked by ``PE.parse``; its spelling back."""
    try:
        return str(PE.parse(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_main(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the subcommand's ``func``; a bad value or file becomes one line on stderr, exit 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"{parser.prog} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def check_memory(nbytes: float, what: str) -> None:
    """Refuse work that cannot fit in this machine's memory, saying so, instead of failing to allocate."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > ram:
        raise ValueError(f"{what} needs at least {nbytes / 2**30:.3g} GiB, more than this machine's "
                         f"{ram / 2**30:.3g} GiB")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="resonance.py", description="Per-feature wavelengths, critical dimension and feature gap "
                "(Eq. 8) of a RoPE scaling, without and with Resonance (Alg. 1).")
    p.add_argument("--dim", type=int, default=128, help="head dimension d (default %(default)s)")
    p.add_argument("--base", type=float, default=10000.0, help="rotary base b (default %(default)g)")
    p.add_argument("--train-len", type=int, default=4096, help="training length L (default %(default)s)")
    p.add_argument("--test-len", type=int, default=32768, help="test length L' (default %(default)s)")
    p.add_argument("--pe", default="rope", help="[res_]METHOD[:FACTOR], e.g. yarn:8 (default %(default)s); the report "
                   f"shows it without and with Resonance; METHOD one of {METHODS}")
    p.add_argument("--alpha", type=float, default=1.0, help="YaRN α (default %(default)g)")
    p.add_argument("--beta", type=float, default=32.0, help="YaRN β (default %(default)g)")
    p.add_argument("--ramp", default="paper", help=f"YaRN ramp, one of {RAMPS} (default %(default)s)")
    a = p.parse_args(argv)
    try:
        pe = dataclasses.replace(PE.parse(a.pe, alpha=a.alpha, beta=a.beta, ramp=a.ramp), resonance=False)
        check_memory(64.0 * a.dim * max(a.test_len, 0), f"--test-len {a.test_len}: the feature gap")
        theta0, (theta, _) = rope_inv_freq(a.dim, a.base), pe.inv_freq(a.dim, a.base, a.train_len, a.test_len)
        theta_r = resonance(theta)
        gap, gap_r = feature_gap(theta, a.train_len, a.test_len), feature_gap(theta_r, a.train_len, a.test_len)
    except ValueError as e:
        print(f"resonance.py: error: {e}", file=sys.stderr)
        return 2
    lam0, lam, lam_r = wavelengths(theta0), wavelengths(theta), wavelengths(theta_r)
    c, c0 = critical_dim(theta, a.train_len), critical_dim(theta0, a.train_len)
    print(f"# pe={pe} d={a.dim} b={a.base:g} L={a.train_len} L'={a.test_len}")
    print(f"{'j':>3} {'dims':>9} {'λ_j (RoPE)':>13} {'λ_j scaled':>13} {'λ̃_j':>9} {'':>5} {'gap':>9} {'gap Res.':>9}")
    for j in range(theta.numel()):
        kind = "pre" if lam[j] < a.train_len else "post"
        print(f"{j:>3} {f'{2 * j}-{2 * j + 1}':>9} {lam0[j].item():>13.2f} {lam[j].item():>13.2f} "
              f"{lam_r[j].item():>9.0f} {kind:>5} {gap[j].item():>9.4f} {gap_r[j].item():>9.4f}")
    print(f"c = {c} pre-critical features of {theta.numel()} (dimensions 0-{2 * c - 1}), those with λ_j < L = "
          f"{a.train_len}" + (f"; unscaled RoPE has c = {c0}" if c0 != c else ""))
    print(f"mean feature gap, all features: {gap.mean().item():.4f} -> {gap_r.mean().item():.4f} with Resonance")
    if c:
        print(f"mean feature gap, pre-critical: {gap[:c].mean().item():.4f} -> "
              f"{gap_r[:c].mean().item():.4f} with Resonance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
