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
