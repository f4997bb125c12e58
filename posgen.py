"""PosGen, the synthetic train-short-test-long benchmark of the Resonance RoPE paper (Section 5, Figure 2).

Each task fixes which j+k earlier tokens x_l depends on, so generating a late token is exactly as hard as
generating an early one; a model that fails after the training length L fails because it does not
recognise the new positions, not because the rule got harder. Paper setting (Section 6.1.1, Appendix C.1):
h = modular addition mod 17, j = 1, k = 3, 10,000 training sequences of length 64, 1,000 validation and
1,000 test sequences of length 256, no first-(j+k)-token prefix shared between them.

    python evaluate.py fig2 --task semirecursive --show 3      # Figure 2 as text: sequences and dependencies
    python evaluate.py fig2 --task cot --length 24 --position 20 --modulus 7

numpy only; generation is vectorised over sequences and loops only over positions l (each token needs the
previous ones).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import numpy as np

TASKS = ("recursive", "cot", "semirecursive")

RULES = {
    "recursive": "x_l = h(x_{l-(j+k)}, …, x_{l-1})",
    "cot": "x_l = h(x_0, …, x_{j-1}, x_{l-k}, …, x_{l-1})",
    "semirecursive": "x_l = h(x_p, …, x_{p+j-1}, x_{l-k}, …, x_{l-1}),  p = ⌊(l-(j+k))/2⌋",
}


def _check_params(task: str, j: int, k: int, modulus: int) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    for name, value in (("j", j), ("k", k)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 2 <= modulus <= 2**63 // (j + k):  # the upper bound keeps a sum of j+k tokens inside int64
        raise ValueError(f"modulus must be in [2, 2**63 // (j+k) = {2**63 // (j + k)}], got {modulus}")


def dependencies(task: str, l: int, j: int = 1, k: int = 3) -> tuple[int, ...]:
    """Positions of the tokens that x_l depends on (Section 5, Figure 2; ``RULES``), for l ≥ j+k, in the order they
    are passed to h: always exactly j+k distinct positions, ascending and < l, so difficulty does not grow with l.

    Semi-recursive's far block p … p+j-1, p = ⌊m/2⌋ with m = l-(j+k) ≥ 0, ends at ⌊m/2⌋+j-1 < m+j = l-k, so it
    never overlaps the k local tokens l-k … l-1; CoT's first j tokens end at j-1 < l-k for the same reason.
    """
    _check_params(task, j, k, 2)
    if l < j + k:
        raise ValueError(f"l must be >= j+k = {j + k}, got {l}")
    m = l - (j + k)
    far = {"recursive": m, "cot": 0, "semirecursive": m // 2}[task]
    return (*range(far, far + j), *range(l - k, l))


def shortcut_position(task: str, l: int, j: int = 1, k: int = 3) -> int | None:
    """The m with x_l = 2·x_{l−1} − x_m (mod p) for every sequence when h is modular addition, or None.

    Subtracting x_{l−1}'s sum from x_l's leaves x_l − x_{l−1} = x_{l−1} − x_m whenever x_l's dependencies are
    x_{l−1}'s with x_m swapped for x_{l−1}: Recursive at every l ≥ j+k+1 (m = l−j−k−1, x_l = 2x_{l−1} − x_{l−5}),
    CoT too (m = l−k−1: 2x_{l−1} − x_{l−4}), Semi-recursive only where its far pointer p does not move (about
    half the positions). A model can learn this two-token rule instead of the (j+k)-token sum; it gives every
    label but the first generated one, x_{j+k} (x_4), which has no x_{l−1} of its own to start from.
    """
    if l < j + k + 1:
        return None
    new, old = set(dependencies(task, l, j, k)), set(dependencies(task, l - 1, j, k))
    added, dropped = new - old, old - new
    return dropped.pop() if added == {l - 1} and len(dropped) == 1 else None


def shortcut_id_ceiling(task: str, train_len: int = 64, j: int = 1, k: int = 3, modulus: int = 17) -> float:
    """ID accuracy (positions j+k … L−1) of a model that knows only ``shortcut_position``'s rule and guesses
    (1/modulus) everywhere else: Recursive and CoT (59 + 1/17)/60 = 98.43 %, Semi-recursive ≈ 53 %."""
    if train_len <= j + k or modulus < 2:
        raise ValueError(f"train_len must be > j+k = {j + k} and modulus >= 2, got {train_len}, {modulus}")
    hits = [1.0 if shortcut_position(task, l, j, k) is not None else 1 / modulus for l in range(j + k, train_len)]
    return sum(hits) / len(hits)


def generate(task: str, prefix: np.ndarray, length: int, j: int = 1, k: int = 3, modulus: int = 17,
             h: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Extend each row of ``prefix`` to ``length`` tokens with the PosGen rule of ``task``.

    Args:
        task: "recursive", "cot" or "semirecursive", the rules of Section 5 (``RULES``). The paper's typeset
            semi-recursive indices, ⌊l-(j+k)/2⌋-j … ⌊l-(j+k)/2⌋-1, are ambiguous: as written they overlap the
            local tokens (x_{l-3} for j=1, k=3), read as ⌊(l-(j+k))/2⌋-j they are negative at l = j+k. Our p is
            the authors' generator's: a far pointer from 0 that advances by one every two generated tokens.
        prefix: (n, w) integers in [0, modulus), the first w ≥ j+k tokens of each sequence (normally
            w = j+k); a wider prefix continues a sequence from position w.
        length: total tokens per sequence, > w.
        j, k: the paper's difficulty constants (j far tokens, k local tokens), each ≥ 1.
        modulus: vocabulary size |V|; tokens are 0 … modulus-1.
        h: V^{j+k} → V applied row-wise: takes an (n, j+k) integer array of the dependencies (in the order of
            ``dependencies``) and returns n integers in [0, modulus). Default: (Σ_i x_i) mod modulus (Sec. 6.1.1).
    Returns:
        (n, length) int64 array whose first w columns are ``prefix``.
    """
    _check_params(task, j, k, modulus)
    prefix = np.asarray(prefix)
    if prefix.ndim != 2 or prefix.shape[1] < j + k:
        raise ValueError(f"prefix must have shape (n, w) with w >= j+k = {j + k}, got {prefix.shape}")
    if prefix.size and not np.issubdtype(prefix.dtype, np.integer):
        raise ValueError(f"prefix must hold integers, got dtype {prefix.dtype}")
    if prefix.size and (prefix.min() < 0 or prefix.max() >= modulus):
        raise ValueError(f"prefix values must be in [0, {modulus}), got [{prefix.min()}, {prefix.max()}]")
    n, w = prefix.shape
    if length <= w:
        raise ValueError(f"length must be > prefix width {w} (j+k = {j + k}), got {length}")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 8 * n * length > ram:  # refuse, rather than fail to allocate
        raise ValueError(f"length {length} × {n} sequences need {8 * n * length / 2**30:.3g} GiB, more than this "
                         f"machine's {ram / 2**30:.3g} GiB")
    if h is None:
        def h(deps: np.ndarray) -> np.ndarray:  # Sec. 6.1.1: modular addition
            return deps.sum(axis=1) % modulus

    # Position-major buffer: x[l] is one contiguous row over all sequences, so each step reads and writes
    # contiguous memory (about 4x faster than slicing columns of an (n, length) array).
    x = np.empty((length, n), dtype=np.int64)
    x[:w] = prefix.T
    for l in range(w, length):
        out = np.asarray(h(x[list(dependencies(task, l, j, k))].T))
        if out.shape != (n,) or (n and out.dtype.kind not in "iu"):
            raise ValueError(f"h must return ({n},) integers, got shape {out.shape} dtype {out.dtype}")
        x[l] = out
    if n and (x[w:].min() < 0 or x[w:].max() >= modulus):
        raise ValueError(f"h must return values in [0, {modulus}), got [{x[w:].min()}, {x[w:].max()}]")
    return np.ascontiguousarray(x.T)


def _sample_prefixes(rng: np.random.Generator, count: int, width: int, modulus: int) -> np.ndarray:
    """``count`` distinct rows of ``width`` base-``modulus`` digits, uniformly without replacement."""
    total = modulus**width  # a Python int: exact even past 2**63
    if total < 2**63:
        # Sample codes 0 … total-1 (numpy never materialises the range unless count is a large share of
        # it), then decode digits, most significant first.
        codes = rng.choice(total, size=count, replace=False).astype(np.int64)
        digits = np.empty((count, width), dtype=np.int64)
        for i in range(width - 1, -1, -1):
            codes, digits[:, i] = np.divmod(codes, modulus)
        return digits
    # Codes would overflow int64: draw digit rows and redraw repeats. Keeping first occurrences and
    # redrawing the rest is sequential sampling with rejection, i.e. still uniform without replacement;
    # with ≥ 2**63 prefixes a repeat is vanishingly rare.
    rows = rng.integers(0, modulus, size=(count, width))
    while True:
        _, first = np.unique(rows, axis=0, return_index=True)
        if first.size == count:
            return rows
        keep = np.sort(first)
        rows = np.concatenate([rows[keep], rng.integers(0, modulus, size=(count - keep.size, width))])


def make_splits(task: str, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000, train_len: int = 64,
                test_len: int = 256, j: int = 1, k: int = 3, modulus: int = 17, seed: int = 0,
                split: str = "disjoint") -> dict[str, np.ndarray]:
    """Train/validation/test sequences of Section 6.1.1 and Appendix C.1.

    ``split="disjoint"`` (the paper): the first j+k tokens of all n_train+n_val+n_test sequences are drawn with
    ``seed`` without replacement from the modulus^(j+k) possible prefixes, so no split shares a prefix.
    ``split="authors"`` (their released code; no seed): the prefixes are ``cycle(combinations(range(modulus),
    j+k))`` — sorted distinct digits — train the first n_train of it, val the first n_val and test the next
    n_test, so every val/test prefix is also a training prefix.

    Returns:
        {"train": (n_train, train_len), "val": (n_val, test_len), "test": (n_test, test_len)} int64 arrays,
        identical for the same arguments.
    """
    _check_params(task, j, k, modulus)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name, value in (("train_len", train_len), ("test_len", test_len)):
        if value <= j + k:
            raise ValueError(f"{name} must be > j+k = {j + k}, got {value}")
    if split not in ("disjoint", "authors") or (split == "authors" and j + k > modulus):
        raise ValueError(f"split must be 'disjoint' or 'authors' (which needs j+k <= modulus), got {split!r}")
    count = n_train + n_val + n_test
    if split == "authors":
        combos = list(itertools.islice(itertools.cycle(itertools.combinations(range(modulus), j + k)),
                                       max(n_train, n_val + n_test)))
        prefixes = np.array(combos[:n_train] + combos[:n_val + n_test], dtype=np.int64).reshape(-1, j + k)
    elif count > modulus ** (j + k):
        raise ValueError(f"n_train+n_val+n_test must be <= modulus^(j+k) = {modulus ** (j + k)} distinct "
                         f"prefixes, got {count}")
    else:
        prefixes = _sample_prefixes(np.random.default_rng(seed), count, j + k, modulus)
    # One pass to the longer length: the rule is causal, so a training sequence starts its longer continuation.
    seqs = generate(task, prefixes, max(train_len, test_len), j, k, modulus)
    return {"train": np.ascontiguousarray(seqs[:n_train, :train_len]),
            "val": np.ascontiguousarray(seqs[n_train:n_train + n_val, :test_len]),
            "test": np.ascontiguousarray(seqs[n_train + n_val:, :test_len])}
