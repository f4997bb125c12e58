"""RoPE, its scalings, and Resonance RoPE (Wang et al., 2024), as pure functions on torch tensors.

Read alongside the paper: each function names the equation, algorithm or section it implements and uses the
paper's symbols. Every public function needs only ``math`` and ``torch`` and can be copied out on its own
(``scaled_inv_freq`` is the one entry point that composes the others).

Symbols
    d        head dimension (``dim``); there are d/2 RoPE *features*, j = 0 … d/2−1, each a pair of dimensions
    b        rotary base (``base``)
    θ_j      angular frequency of feature j, ``inv_freq[j]`` (Eq. 1)
    λ_j      wavelength 2π/θ_j (Eq. 7); λ̃_j its Resonance rounding (Alg. 1)
    L, L'    training and test lengths (``train_len``, ``test_len``); s = L'/L the scaling factor (``factor``)
    c        critical dimension: the number of pre-critical features, those with λ_j < L (Sec. 3.2)
    α, β, γ_j  YaRN's ramp (Sec. 3.3)

Command line, a per-feature report of wavelengths and feature gaps:

    python resonance.py --dim 128 --base 10000 --train-len 4096 --test-len 32768 --method yarn --factor 8
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

METHODS = ("rope", "linear", "ntk", "dynamic_ntk", "yarn")
RAMPS = ("paper", "index")


def rope_inv_freq(dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE's angular frequencies θ_j = b^(−2j/d), j = 0 … d/2−1 (Eq. 1), as float64.

    Args:
        dim: head dimension d (even, > 0).
        base: rotary base b (> 1).
    Returns:
        θ, shape (d/2,), float64, decreasing.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even integer, got {dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    j = torch.arange(dim // 2, dtype=torch.float64)
    return base ** (-2.0 * j / dim)


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """λ_j = 2π/θ_j (Eq. 7): the number of tokens after which feature j's rotary angle m·θ_j comes round.

    For LLaMA (d=128, b=10000) they run from 2π ≈ 6.28 (j=0) to 2π·10000^(126/128) ≈ 54410.14 (j=63).
    """
    return 2 * math.pi / inv_freq.to(torch.float64)


def critical_dim(inv_freq: torch.Tensor, train_len: int) -> int:
    """c, the number of pre-critical features: those with λ_j < L (Sec. 3.2).

    The critical feature is j = c, the first with λ_c ≥ L; features j < c are *pre-critical* and see every
    rotary angle of their period during training. Their dimensions are 0 … 2c−1. Example: the PosGen model
    (d=64, b=10000, L=64) has c = 9 pre-critical features of 32, i.e. dimensions 0 … 17; Sec. 6.1.1's "the
    first 17" is that last pre-critical *dimension* index 2c−1 = 17. LLaMA (d=128, b=10000, L=4096) has c = 46
    of 64 features pre-critical ("over half", Sec. 1).
    """
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    lam = 2 * math.pi / inv_freq.to(torch.float64)
    return int((lam < train_len).sum())


def resonance(inv_freq: torch.Tensor) -> torch.Tensor:
    """Resonance RoPE, Algorithm 1: λ̃_j = round(λ_j), θ̃_j = 2π/λ̃_j.

    Each feature then repeats exactly every λ̃_j tokens, so on pre-critical features (λ̃_j < L) every test
    position shows a rotary angle already seen in training (Theorem 1). A wavelength below 1/2 would round
    to 0 (an infinite frequency); we clamp λ̃ to at least 1 (a feature that is constant over integer positions).

    Args:
        inv_freq: θ (any RoPE or scaled-RoPE frequencies), shape (d/2,).
    Returns:
        θ̃, float64, same shape.
    """
    lam = 2 * math.pi / inv_freq.to(torch.float64)
    lam_tilde = torch.round(lam).clamp_min(1.0)
    return 2 * math.pi / lam_tilde


# ``scaled_inv_freq`` has a parameter named ``resonance``; it reaches Algorithm 1 through this alias.
_resonance = resonance


def linear_inv_freq(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Position Interpolation (Chen et al., 2023): θ_j/s.

    Dividing every θ_j by s is the same as dividing every position m by s, since the angle is m·θ_j.
    """
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    return inv_freq.to(torch.float64) / factor


def ntk_inv_freq(dim: int, base: float, factor: float) -> torch.Tensor:
    """NTK-aware scaling (bloc97, 2023; App. C.2): RoPE with the base b replaced by b·s^(d/(d−2)).

    The exponent d/(d−2) makes the lowest frequency θ_{d/2−1} exactly θ_{d/2−1}/s (interpolated like PI)
    while θ_0 is unchanged (extrapolated): a smooth blend in between.
    """
    if not isinstance(dim, int) or dim <= 2 or dim % 2:
        raise ValueError(f"dim must be an even integer > 2, got {dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    new_base = base * factor ** (dim / (dim - 2))
    j = torch.arange(dim // 2, dtype=torch.float64)
    return new_base ** (-2.0 * j / dim)


def dynamic_ntk_inv_freq(dim: int, base: float, train_len: int, seq_len: int,
                         factor: float = 1.0) -> torch.Tensor:
    """Dynamic NTK-aware scaling (App. C.2; HF ``rope_type="dynamic"``).

    The NTK base is recomputed from the current length L_c = max(seq_len, L):
    b' = b·(s·L_c/L − (s − 1))^(d/(d−2)). With the default s = 1 this is b·(L_c/L)^(d/(d−2)), i.e. NTK-aware
    scaling with s = L_c/L, the paper's description; below L it is plain RoPE.
    """
    if not isinstance(dim, int) or dim <= 2 or dim % 2:
        raise ValueError(f"dim must be an even integer > 2, got {dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not seq_len > 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    cur_len = max(seq_len, train_len)
    new_base = base * (factor * cur_len / train_len - (factor - 1)) ** (dim / (dim - 2))
    j = torch.arange(dim // 2, dtype=torch.float64)
    return new_base ** (-2.0 * j / dim)


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

    Args:
        dim: d. base: b. train_len: L, the original context length. factor: s ≥ 1.
        alpha, beta: α < β, rotation counts bounding the ramp (defaults α=1, β=32 as for LLaMA).
        ramp: "paper" or "index".
    Returns:
        θ̂, float64, shape (d/2,). s = 1 gives plain RoPE.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even integer, got {dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    if not 0 < alpha < beta:
        raise ValueError(f"alpha and beta must satisfy 0 < alpha < beta, got alpha={alpha!r}, beta={beta!r}")
    j = torch.arange(dim // 2, dtype=torch.float64)
    theta = base ** (-2.0 * j / dim)
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


def yarn_mscale(factor: float) -> float:
    """YaRN's attention temperature: √(1/t) = 0.1·ln s + 1, and 1 for s ≤ 1.

    It multiplies both cos and sin, so q and k each get it once and the logits q·k get it squared (1/t).
    """
    if factor <= 1:
        return 1.0
    return 0.1 * math.log(factor) + 1.0


def scaled_inv_freq(method: str, dim: int, base: float, train_len: int, factor: float = 1.0,
                    resonance: bool = False, seq_len: int | None = None, **kw) -> tuple[torch.Tensor, float]:
    """One entry point for every PE of the paper: ``(θ, mscale)`` for RoPE or a scaled RoPE, with Alg. 1 on top.

    Args:
        method: "rope" (Eq. 1), "linear" (PI), "ntk" (NTK-aware), "dynamic_ntk" (needs ``seq_len``, the
            current length; defaults to L) or "yarn" (``kw``: alpha, beta, ramp).
        dim, base, train_len: d, b and L (the original context length).
        factor: s ≥ 1.
        resonance: apply Resonance rounding (Alg. 1) after the scaling: Res. RoPE, Res. YaRN, …
    Returns:
        θ (float64, shape (d/2,)) and the cos/sin multiplier (YaRN's temperature; 1 otherwise).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    allowed_kw = {"alpha", "beta", "ramp"} if method == "yarn" else set()
    extra = set(kw) - allowed_kw
    if extra:
        raise ValueError(f"method {method!r} takes no argument(s) {sorted(extra)}")
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    mscale = 1.0
    if method == "rope":
        theta = rope_inv_freq(dim, base)
    elif method == "linear":
        theta = linear_inv_freq(rope_inv_freq(dim, base), factor)
    elif method == "ntk":
        theta = ntk_inv_freq(dim, base, factor)
    elif method == "dynamic_ntk":
        theta = dynamic_ntk_inv_freq(dim, base, train_len, train_len if seq_len is None else seq_len, factor)
    else:
        theta = yarn_inv_freq(dim, base, train_len, factor, **kw)
        mscale = yarn_mscale(factor)
    if resonance:
        theta = _resonance(theta)
    return theta, mscale


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, mscale: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(n·θ_j) and sin(n·θ_j) tables (the entries of R_{Θ,n}, Eq. 2-3), times ``mscale``.

    Features whose wavelength is an integer λ̃ (Resonance, Alg. 1) are computed from the angle
    2π·(n mod λ̃)/λ̃ in float64, so the table is *exactly* periodic: the row at n is bit-identical to the row
    at n mod λ̃ for any integer position — this is Theorem 1 made true in floating point, where n·θ̃ itself
    would drift. It is also faster: such a feature needs cos/sin over one period only, then a gather.
    Other features get n·θ_j in float64. Everything is cast to ``dtype`` at the end (never compute angles in
    fp16/bf16: their integers are not exact past 2048/256).

    Args:
        inv_freq: θ, shape (F,) with F = d/2.
        positions: integer positions n, shape (N,).
        mscale: multiplier on cos and sin (YaRN's temperature).
        dtype: output dtype.
    Returns:
        cos, sin: shape (N, F).
    """
    if positions.dim() != 1 or positions.is_floating_point():
        raise ValueError(f"positions must be a 1-D integer tensor, got shape {tuple(positions.shape)} "
                         f"and dtype {positions.dtype}")
    theta = inv_freq.to(torch.float64).reshape(-1)
    pos = positions.to(torch.int64)
    n_pos, n_feat = pos.numel(), theta.numel()
    lam = 2 * math.pi / theta
    lam_int = torch.round(lam)
    # 1e-6 relative: a Resonance θ̃ that went through float32 still counts as an integer wavelength
    periodic = ((lam - lam_int).abs() <= 1e-6 * lam) & (lam_int >= 1)
    cos = torch.empty(n_pos, n_feat, dtype=dtype)
    sin = torch.empty(n_pos, n_feat, dtype=dtype)

    direct = (~periodic).nonzero().flatten()
    if direct.numel():
        ang = pos.to(torch.float64)[:, None] * theta[direct]
        cos[:, direct] = (torch.cos(ang) * mscale).to(dtype)
        sin[:, direct] = (torch.sin(ang) * mscale).to(dtype)

    feats = periodic.nonzero().flatten()
    if feats.numel():
        periods = lam_int[feats].to(torch.int64)
        # Where one period is shorter than the table, evaluate cos/sin over that period and gather;
        # otherwise the period table would be the larger one, so evaluate the reduced angles directly.
        short = periods <= n_pos
        if short.any():
            fs, ps = feats[short], periods[short]
            offsets = torch.cumsum(ps, 0) - ps
            r = torch.arange(int(ps.sum()), dtype=torch.int64) - torch.repeat_interleave(offsets, ps)
            ang = r.to(torch.float64) * torch.repeat_interleave(2 * math.pi / ps.to(torch.float64), ps)
            cos_period = (torch.cos(ang) * mscale).to(dtype)
            sin_period = (torch.sin(ang) * mscale).to(dtype)
            if fs.numel() == n_feat and pos.abs().max() < 2**50 and ps.sum() < 2**31:
                # All features periodic (a Resonance table): gather straight into the output, a block of rows
                # at a time, so the index block stays in cache and no N×F index is ever allocated.
                # n mod λ̃ as n − λ̃·⌊(n + ½)/λ̃⌋ in float64: the ½ keeps the quotient at least ½/λ̃ away from an
                # integer, so ⌊·⌋ is exact for |n| < 2^50, and it vectorises where integer division does not.
                p64 = ps.to(torch.float64)
                inv_p, off64 = 1.0 / p64, offsets.to(torch.float64)
                rows = max(1, 2**18 // n_feat)
                buf = torch.empty(min(rows, n_pos), n_feat, dtype=torch.float64)
                idx = torch.empty(min(rows, n_pos), n_feat, dtype=torch.int32)
                flat_cos, flat_sin = cos.view(-1), sin.view(-1)
                for start in range(0, n_pos, rows):
                    n = pos[start:start + rows].to(torch.float64)[:, None]
                    m = n.shape[0]
                    q = torch.mul(n + 0.5, inv_p, out=buf[:m]).floor_()
                    torch.addcmul(n, q, p64, value=-1.0, out=buf[:m]).add_(off64)
                    ib = idx[:m].copy_(buf[:m]).view(-1)
                    out = slice(start * n_feat, (start + m) * n_feat)
                    torch.index_select(cos_period, 0, ib, out=flat_cos[out])
                    torch.index_select(sin_period, 0, ib, out=flat_sin[out])
            else:
                idx = torch.remainder(pos[:, None], ps).add_(offsets)
                cos[:, fs] = cos_period[idx]
                sin[:, fs] = sin_period[idx]
        if (~short).any():
            fl, pl = feats[~short], periods[~short]
            r = torch.remainder(pos[:, None], pl)
            ang = r.to(torch.float64) * (2 * math.pi / pl.to(torch.float64))  # the same angle as a period table
            cos[:, fl] = (torch.cos(ang) * mscale).to(dtype)
            sin[:, fl] = (torch.sin(ang) * mscale).to(dtype)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotate the last dimension of q or k by R_{Θ,n} (Eq. 4-5).

    Args:
        x: (..., T, d).
        cos, sin: (T, d/2) tables from ``rope_cos_sin`` (any mscale already in them, so it reaches q once
            and k once).
        layout: "half" pairs dimension j with j + d/2 (HF / GPT-NeoX "rotate half"); "interleaved" pairs
            2j with 2j+1 (the paper's [2j : 2j+1], Meta's llama, GPT-J, llama.cpp).
    Returns:
        The rotated tensor, same shape and dtype as x (the rotation is done in at least float32).
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
    wavelengths are reduced exactly (n mod λ̃) so a gap of 0 is exactly 0.

    Returns:
        h, float64, shape (d/2,).
    """
    if not train_len > 0:
        raise ValueError(f"train_len must be > 0, got {train_len!r}")
    if not test_len > train_len:
        raise ValueError(f"test_len must be > train_len = {train_len}, got {test_len!r}")
    theta = inv_freq.to(torch.float64).reshape(-1, 1)
    lam = 2 * math.pi / theta
    lam_int = torch.round(lam)
    periodic = ((lam - lam_int).abs() <= 1e-6 * lam) & (lam_int >= 1)
    period = torch.where(periodic, lam_int, torch.ones_like(lam))

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
# Command line


class _Parser(argparse.ArgumentParser):
    """argparse that reports a user mistake in one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="resonance.py", description="Per-feature wavelengths, critical dimension and feature gap "
                "(Eq. 8) of a RoPE scaling, without and with Resonance (Alg. 1).")
    p.add_argument("--dim", type=int, default=128, help="head dimension d (default 128)")
    p.add_argument("--base", type=float, default=10000.0, help="rotary base b (default 10000)")
    p.add_argument("--train-len", type=int, default=4096, help="training length L (default 4096)")
    p.add_argument("--test-len", type=int, default=32768, help="test length L' (default 32768)")
    p.add_argument("--method", default="rope", help=f"one of {METHODS} (default rope)")
    p.add_argument("--factor", type=float, default=1.0, help="scaling factor s (default 1)")
    p.add_argument("--alpha", type=float, default=1.0, help="YaRN α (default 1)")
    p.add_argument("--beta", type=float, default=32.0, help="YaRN β (default 32)")
    p.add_argument("--ramp", default="paper", help=f"YaRN ramp, one of {RAMPS} (default paper)")
    a = p.parse_args(argv)
    try:
        kw = {"alpha": a.alpha, "beta": a.beta, "ramp": a.ramp} if a.method == "yarn" else {}
        theta0 = rope_inv_freq(a.dim, a.base)
        theta, _ = scaled_inv_freq(a.method, a.dim, a.base, a.train_len, a.factor, seq_len=a.test_len, **kw)
        gap = feature_gap(theta, a.train_len, a.test_len)
        theta_r = _resonance(theta)
        gap_r = feature_gap(theta_r, a.train_len, a.test_len)
    except ValueError as e:
        print(f"resonance.py: error: {e}", file=sys.stderr)
        return 2
    lam0, lam, lam_r = wavelengths(theta0), wavelengths(theta), wavelengths(theta_r)
    c = critical_dim(theta, a.train_len)
    print(f"# method={a.method} s={a.factor:g} d={a.dim} b={a.base:g} L={a.train_len} L'={a.test_len}")
    print(f"{'j':>3} {'dims':>9} {'λ_j (RoPE)':>13} {'λ_j scaled':>13} {'λ̃_j':>9} {'':>5} "
          f"{'gap':>9} {'gap Res.':>9}")
    for j in range(theta.numel()):
        kind = "pre" if lam[j] < a.train_len else "post"
        print(f"{j:>3} {f'{2 * j}-{2 * j + 1}':>9} {lam0[j].item():>13.2f} {lam[j].item():>13.2f} "
              f"{lam_r[j].item():>9.0f} {kind:>5} {gap[j].item():>9.4f} {gap_r[j].item():>9.4f}")
    pre = slice(0, c)
    c0 = critical_dim(theta0, a.train_len)
    print(f"c = {c} pre-critical features of {theta.numel()} (dimensions 0-{2 * c - 1}), those with λ_j < L = "
          f"{a.train_len}" + (f"; unscaled RoPE has c = {c0}" if c0 != c else ""))
    print(f"mean feature gap, all features: {gap.mean().item():.4f} -> {gap_r.mean().item():.4f} with Resonance")
    if c:
        print(f"mean feature gap, pre-critical: {gap[pre].mean().item():.4f} -> "
              f"{gap_r[pre].mean().item():.4f} with Resonance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
