"""The one test file. Tests read like the paper's claims; each section tests one module.

Run: pytest test_all.py   (oracle tests skip only when transformers is not installed)
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

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


# ======================================== model.py: Llama ========================================


# ======================================== finetune.py llama ========================================
