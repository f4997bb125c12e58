"""Evaluation entry points for the Resonance RoPE reference, in the paper's order.

    python evaluate.py fig1                    # Figure 1: m·θ_6 of RoPE vs. Resonance RoPE
    python evaluate.py fig2 --task cot         # Figure 2 as text: PosGen sequences and one token's dependencies
    python evaluate.py table1 --preset quick --jobs 2   # Table 1, Figure 3, accuracy by position: 6 layers, ~10 min
    python evaluate.py table1 --preset quick --seeds 5549 4955 42 --jobs 2   # … with paired statistics over seeds
    python evaluate.py ablation --preset cot   # Table 1 with each harness item switched off in turn, 3 seeds
    python evaluate.py perplexity              # SmolLM2 perplexity vs context length, 7 PEs (no fine-tuning)
    python evaluate.py passkey --lengths 2048 8192 16384 --trials 2
    python evaluate.py fig4                    # Fig. 4 after fine-tuning: yarn:4 vs res_yarn:4 (a GPU budget)
    python evaluate.py speed                   # every performance target, as a ratio to a same-run baseline

Every subcommand is a function ``cmd_<name>(args)``; user mistakes become one line on stderr and exit 2. Every
default output goes under runs/ (git-ignored); the committed results/ are written only with --out results/....
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import platform
import random
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

import finetune as ft
import model as model_lib
import posgen
import resonance
from resonance import PE, Distinct, Parser, default_device, device, number, path_for, pe_spelling, run_main

# ----------------------------------------------------------------------------------------------------------
# Figure 1 (Sec. 3-4): RoPE's and Resonance RoPE's rotation angles; Figure 2 (Sec. 5): PosGen's dependencies.


def cmd_fig1(args: argparse.Namespace) -> int:
    """Figure 1: rotation angles m·θ_6 of RoPE and Resonance RoPE for m < L = 64 and L ≤ m < L' = 128."""
    dim, base, L, L2, j = 64, 10000.0, 64, 128, 6
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), subplot_kw={"projection": "polar"})
    for ax, (name, res) in zip(axes, (("RoPE", False), ("Resonance RoPE", True)), strict=True):
        theta, _ = PE(resonance=res).inv_freq(dim, base, L)
        m = torch.arange(L2, dtype=torch.float64)
        ang = torch.remainder(m * theta[j], 2 * math.pi)  # float64: exact enough to show coincidence
        gap = resonance.feature_gap(theta, L, L2)[j].item()
        ax.scatter(ang[:L], torch.ones(L), s=28, label=f"training positions 0-{L - 1}")
        ax.scatter(ang[L:], torch.full((L2 - L,), 0.8), s=28, marker="x", label=f"OOD positions {L}-{L2 - 1}")
        for a in ang[L:]:
            ax.plot([a, a], [0.8, 1.0], color="0.7", lw=0.5)
        ax.set_ylim(0, 1.1)
        ax.set_yticks([])
        lam = 2 * math.pi / theta[j].item()
        ax.set_title(f"{name}: angle m·θ_{j} mod 2π\nλ_{j} = {lam:.2f}, feature gap h = {gap:.3f}", fontsize=10)
    axes[0].legend(loc="lower center", bbox_to_anchor=(1.1, -0.22), ncol=2, fontsize=8)
    fig.suptitle(f"Figure 1: d = {dim}, b = {base:g}, L = {L}, L' = {L2}", fontsize=10)
    _save(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_fig2(args: argparse.Namespace) -> int:
    """Figure 2 as text (Sec. 5): a few sequences of one PosGen task, and the j+k earlier positions that token x_l
    depends on (``posgen.dependencies``), with the sum that generated it."""
    j, k, m, n = args.j, args.k, args.modulus, args.length
    if not 1 <= args.show <= m ** (j + k):
        raise ValueError(f"--show must be in [1, modulus^(j+k) = {m ** (j + k)}], got {args.show}")
    if n <= j + k:
        raise ValueError(f"--length must be > j+k = {j + k}, got {n}")
    l = n - 1 if args.position is None else args.position
    if not j + k <= l < n:
        raise ValueError(f"--position must be in [j+k, length) = [{j + k}, {n}), got {l}")
    seqs = posgen.make_splits(args.task, args.show, 0, 0, n, n, j, k, m, seed=args.seed)["train"]
    deps, width = posgen.dependencies(args.task, l, j, k), len(str(max(n, m) - 1)) + 2

    def cells(row) -> str:
        return "".join(f"{v:>{width}}" for v in row)

    print(f"{args.task}: {posgen.RULES[args.task]}\nh = sum mod {m}, j = {j}, k = {k}")
    print(f"{'position':<10}{cells(range(n))}")
    for i, row in enumerate(seqs):
        print(f"{f'seq {i}':<10}{cells(row)}")
    print(f"{f'x_{l}':<10}{cells(['d' if q in deps else ('^' if q == l else '') for q in range(n)])}".rstrip())
    terms, values = (" + ".join(f(q) for q in deps) for f in (lambda q: f"x_{q}", lambda q: str(seqs[0, q])))
    print(f"x_{l} = ({terms}) mod {m} = ({values}) mod {m} = {seqs[0, l]}   (seq 0; d = depends on, ^ = generated)")
    return 0


# ----------------------------------------------------------------------------------------------------------
# Table 1 and Figure 3 (Sec. 6.1): summary, paired differences, report, figures, the runs, merge, the command.


TABLE1_TASKS = {"recursive": "Recursive", "cot": "CoT", "semirecursive": "Semi-Rec."}
TABLE1_PES = {"rope": "RoPE", "res_rope": "Res. RoPE", "yarn": "YaRN", "res_yarn": "Res. YaRN"}


# The paper's Table 1: OOD accuracy (%), (mean, variance) over five seeds.
PAPER_TABLE1 = {
    "recursive": {"rope": (65.29, 0.43), "res_rope": (62.64, 0.15), "yarn": (95.93, 0.04), "res_yarn": (98.30, 0.00)},
    "cot": {"rope": (69.56, 0.33), "res_rope": (75.25, 0.10), "yarn": (98.71, 0.00), "res_yarn": (99.58, 0.00)},
    "semirecursive": {"rope": (17.96, 0.03), "res_rope": (29.78, 0.07), "yarn": (33.70, 0.04),
                      "res_yarn": (48.46, 0.03)},
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table1_summary(runs: list[dict]) -> dict:
    """Per (task, PE): OOD and ID accuracy in %, per seed and as mean ± std over seeds (sample std; beside it the
    population variance, np.var), the ID accuracy without x_4 ("id_x4free", where the runs hold it), and whether
    the cell is comparable: mean ID ≥ 95 % — over positions j+k+1 … L−1 where recorded, since x_4 alone is 1/60
    of ID and the shortcut learns all but it (``posgen.shortcut_position``) — so the model learned the rule and
    OOD measures the PE. The 95 % line is this project's, not the paper's."""
    out: dict = {}
    for task, pe in dict.fromkeys((r["task"], r["pe"]) for r in runs):
        cell = sorted((r for r in runs if (r["task"], r["pe"]) == (task, pe)), key=lambda r: r["seed"])
        ood, acc = ([100 * r[k] for r in cell] for k in ("ood_acc", "id_acc"))
        x4free = [100 * r["id_acc_x4free"] for r in cell] if all("id_acc_x4free" in r for r in cell) else None
        (ood_mean, ood_std), (id_mean, id_std) = _mean_std(ood), _mean_std(acc)
        learned_on = np.mean(x4free) if x4free else id_mean
        out.setdefault(task, {})[pe] = {"n": len(ood), "seeds": [r["seed"] for r in cell], "ood": ood, "id": acc,
                                        "ood_mean": ood_mean, "ood_std": ood_std, "ood_var": float(np.var(ood)),
                                        "id_mean": id_mean, "id_std": id_std, "id_x4free": x4free,
                                        "id_x4free_mean": float(np.mean(x4free)) if x4free else None,
                                        "comparable": bool(learned_on >= 100 * ft.LEARNED_ID_ACC)}
    return out


def bootstrap_interval(values: list[float], n: int = 10000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of ``values``: ``n`` resamples of the units (seeds,
    documents) with replacement, drawn by numpy's generator seeded with ``seed``."""
    d = np.asarray(values, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), (n, len(d)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def sign_test_p(values: list[float]) -> float:
    """Exact two-sided sign test of "a difference is as likely positive as negative": with k of the n non-zero
    values positive, p = 2·P(X ≤ min(k, n−k)) for X ~ Binomial(n, ½), at most 1 (ties, exact zeros, left out)."""
    signs = [v > 0 for v in values if v != 0]
    n, k = len(signs), sum(signs)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n) if n else 1.0


def seeds_needed(sd: float, delta: float) -> float:
    """Roughly how many paired seeds find a mean difference ``delta`` when the differences have standard deviation
    ``sd``: n ≈ 8·(sd/δ)² (a two-sided 5 % test with 80 % power: (1.96 + 0.84)² ≈ 8)."""
    return 8 * (sd / delta) ** 2 if delta else math.inf


def paired_differences(summary: dict) -> dict:
    """Per task: Res. RoPE − RoPE and Res. YaRN − YaRN in OOD points, seed by seed (same seed, same data), only for
    seeds both rows ran; their mean ± sd, and with 2+ seeds the standard error sd/√n, a 95 % bootstrap interval of
    the mean (``bootstrap_interval``), how many seeds have Resonance ahead and the sign test's p (``sign_test_p``)."""
    out: dict = {}
    for task, cells in summary.items():
        for base in ("rope", "yarn"):
            a, b = cells.get("res_" + base), cells.get(base)
            common = sorted(set(a["seeds"]) & set(b["seeds"])) if a and b else []
            diff = [a["ood"][a["seeds"].index(s)] - b["ood"][b["seeds"].index(s)] for s in common]
            if diff:
                mean, std = _mean_std(diff)
                out.setdefault(task, {})[f"res_{base}-{base}"] = {
                    "seeds": common, "diff": diff, "mean": mean, "std": std,
                    "paper": PAPER_TABLE1[task]["res_" + base][0] - PAPER_TABLE1[task][base][0],
                    "comparable": a["comparable"] and b["comparable"]} | ({
                        "se": std / len(diff) ** 0.5, "ci95": bootstrap_interval(diff),
                        "ahead": sum(d > 0 for d in diff), "sign_p": sign_test_p(diff)} if len(diff) > 1 else {})
    return out


def n_params(preset_config: dict, harness: dict) -> int:
    """Parameters of a preset's PosGen model (frozen ones included)."""
    net = ft.posgen_model({"preset": preset_config, "harness": harness, "pe": "rope"})[0]
    return sum(p.numel() for p in net.parameters())


def paper_size(preset_config: dict) -> bool:
    return preset_config["d_model"] == 512 and preset_config["epochs"] == 150


def table1_header(data: dict) -> list[str]:
    """What was run (model size, budget, seeds, harness), and how the paper's column compares to it."""
    c, h, seeds = data["preset_config"], data["harness"], data["seeds"]
    ours, paper = n_params(c, h), n_params(dataclasses.asdict(ft.PRESETS["paper"]), h)  # the paper's at this depth
    harness = {"code": "the authors' released code", "paper": "App. C.1 as written"}[h["protocol"]]
    changed = ", ".join(f"{k}={v}" for k, v in h.items() if v != dataclasses.asdict(ft.HARNESSES[h["protocol"]])[k])
    return [f"Table 1, preset {data['preset']}: d_model {c['d_model']} ({c['n_head']} heads × 64, d_ff {c['d_ff']}, "
            f"{h['n_layer']} layers, {ours / 1e6:.1f}M parameters), {c['epochs']} epochs of {c['n_train']:,} "
            f"sequences, {len(seeds)} seed{'s' * (len(seeds) > 1)} ({', '.join(map(str, seeds))}); harness: "
            f"{harness}" + (f" with {changed}" if changed else "") + ".",
            "The paper's column: App. C.1's model and budget, 5 seeds." if paper_size(c) else
            f"The paper's column comes from App. C.1's model (d_model 512, {paper / 1e6:.1f}M parameters, "
            f"{paper / ours:.1f}× these) trained 150 epochs, not {c['epochs']}: its levels are not comparable to ours, "
            "only the orderings."]


def _cell(c: dict | None) -> str:
    if c is None:
        return "not run"
    ids = f"{c['id_mean']:.2f}" + (f"; {c['id_x4free_mean']:.2f}" if c.get("id_x4free_mean") is not None else "")
    return (f"{c['ood_mean']:.2f}" + (f" ± {c['ood_std']:.2f}" if c["n"] > 1 else "") + f" ({ids})"
            + ("" if c["comparable"] else " †"))


def format_table1(summary: dict) -> str:
    """Table 1 as a Markdown table: per task, our OOD accuracy (mean, ± std over seeds when there are several;
    † where the rule was not fully learned, ID < 95 %) with our ID accuracy (and ID without x_4 where recorded),
    and the paper's OOD mean (variance)."""
    tasks = [t for t in TABLE1_TASKS if t in summary]
    x4 = any(c.get("id_x4free_mean") is not None for cells in summary.values() for c in cells.values())
    lines = ["OOD accuracy (%) at positions L … L'-1 (ID accuracy at j+k … L-1" + (
             "; ID without x_4, at j+k+1 … L-1" if x4 else "") + " in brackets)",
             "| PE | " + " | ".join(f"{TABLE1_TASKS[t]} OOD (ID) | paper (var)" for t in tasks) + " |",
             "|---" * (1 + 2 * len(tasks)) + "|"]
    for pe, name in TABLE1_PES.items():
        cells = [x for t in tasks for x in (_cell(summary[t].get(pe)), "{:.2f} ({:.2f})".format(*PAPER_TABLE1[t][pe]))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(not c["comparable"] for cells in summary.values() for c in cells.values()):
        lines.append(f"† ID{' without x_4' if x4 else ''} < {100 * ft.LEARNED_ID_ACC:.0f} %: the rule was not fully "
                     "learned, so that OOD number does not measure the PE.")
    return "\n".join(lines)


def seed_lines(summary: dict) -> list[str]:
    """With several seeds, each row's OOD accuracy seed by seed (the table gives their mean ± std)."""
    return [f"  {TABLE1_TASKS[t]} {TABLE1_PES[pe]} per seed: " + ", ".join(
        f"{s} {x:.2f}" for s, x in zip(c["seeds"], c["ood"], strict=True))
        for t in TABLE1_TASKS for pe, c in summary.get(t, {}).items() if c["n"] > 1]


def paired_lines(summary: dict, paired: dict) -> list[str]:
    """Each Res. − base OOD difference, per seed, beside both rows' ID accuracy and the paper's difference; with
    2+ seeds its mean ± sd, SE, 95 % bootstrap interval, seeds with Resonance ahead, the sign test's p, and roughly
    how many seeds the paper's difference would need at this sd (``seeds_needed``); a pair with a row below 95 % ID
    says so in the same line."""
    lines = ["Paired differences Res. − base, OOD points (same seed, same data):"]
    for task, pairs in ((t, paired[t]) for t in TABLE1_TASKS if t in paired):
        for key, d in pairs.items():
            res, base = key.split("-")
            a, b, paper, n = summary[task][res], summary[task][base], d["paper"], len(d["diff"])
            value = (f"{d['mean']:+.2f} ± {d['std']:.2f} over {n} seeds, SE {d['se']:.2f}, 95 % bootstrap CI "
                     f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], Resonance ahead in {d['ahead']} of {n}, sign test "
                     f"p = {d['sign_p']:.3g}; paper {paper:+.2f} (~{seeds_needed(d['std'], paper):.0f} seeds to "
                     "find it at this sd)" if n > 1 else f"{d['mean']:+.2f} (seed {d['seeds'][0]}); paper {paper:+.2f}")
            unlearned = [TABLE1_PES[p] for p, c in ((res, a), (base, b)) if not c["comparable"]]
            lines.append(f"  {TABLE1_TASKS[task]}, {TABLE1_PES[res]} − {TABLE1_PES[base]}: {value}; ID "
                         f"{a['id_mean']:.2f} vs {b['id_mean']:.2f}" + (
                             f"; {' and '.join(unlearned)} below 95 % ID: the rule was not fully learned" if
                             unlearned else ""))
            if n > 1:
                lines.append("    per seed: " + ", ".join(f"{s} {x:+.2f}" for s, x in zip(d["seeds"], d["diff"],
                                                                                          strict=True)))
    return lines


def closing_sentences(summary: dict, paired: dict, n_seeds: int, at_paper_size: bool) -> list[str]:
    """What the run shows (the signs of the paired differences, YaRN vs RoPE), what it does not, and where
    the rest is."""
    pairs = [(f"{TABLE1_TASKS[t]} {TABLE1_PES[k.split('-')[0]]} − {TABLE1_PES[k.split('-')[1]]}", d)
             for t in TABLE1_TASKS for k, d in paired.get(t, {}).items()]
    ahead, behind = ([n for n, d in pairs if (d["mean"] > 0) == sign] for sign in (True, False))
    yarn = [f"{summary[t]['yarn']['ood_mean'] - summary[t]['rope']['ood_mean']:+.1f} ({TABLE1_TASKS[t]})"
            for t in TABLE1_TASKS if {"rope", "yarn"} <= summary.get(t, {}).keys()]
    def named(names: list[str]) -> str:
        return f" ({', '.join(names)})" if names else ""
    out = [f"This run: Resonance is ahead of its base row in {len(ahead)} of {len(pairs)} pairs{named(ahead)} and "
           f"behind in {len(behind)}{named(behind)}" + (f"; YaRN − RoPE is {', '.join(yarn)} OOD points." if yarn
                                                       else ".")]
    if n_seeds == 1:
        out.append("One seed cannot tell a difference from seed-to-seed noise" + (
            "." if at_paper_size else ", and the model is smaller and shorter-trained than the paper's: neither the "
            "sizes nor the signs are a verdict on the paper."))
    else:
        sep = [n for n, d in pairs if abs(d["mean"]) > 2 * d["std"] / len(d["diff"]) ** 0.5]
        rest = "; the others are within seed noise." if len(sep) < len(pairs) else "."
        out.append((f"More than 2 standard errors (std/√n) from 0: {', '.join(sep)}{rest}" if sep else
                    "No difference is more than 2 standard errors (std/√n) from 0: all are within seed noise.")
                   + ("" if at_paper_size else " The levels are not the paper's (smaller model, shorter training)."))
    unlearned = [f"{TABLE1_TASKS[t]} {TABLE1_PES[p]}" for t, cells in summary.items() for p, c in cells.items()
                 if not c["comparable"]]
    if unlearned:
        out.append(f"Below 95 % ID, the rule not fully learned: {', '.join(unlearned)}.")
    out.append("The 20-seed study at this depth, the 2-layer results (the paper's text) and the paper-size GPU run: "
               "results/table1_*.json, explained in results/README.md.")
    return out


def table1_report(data: dict) -> str:
    """The main job's closing lines, from its results JSON: header, table (and each seed's values), paired
    differences, closing sentences."""
    summary, paired = data["table"], data["paired"]
    return "\n".join([*table1_header(data), format_table1(summary), *seed_lines(summary),
                      *paired_lines(summary, paired),
                      *closing_sentences(summary, paired, len(data["seeds"]), paper_size(data["preset_config"]))])


def plot_fig3(runs: list[dict], path: Path, title: str) -> None:
    """Figure 3: validation loss vs. epoch, the four PEs, one panel per subtask (mean over the seeds, which all
    validate on the same epochs)."""
    plt, summary = _pyplot(), table1_summary(runs)
    tasks = [t for t in TABLE1_TASKS if t in summary]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for color, (pe, name) in enumerate(TABLE1_PES.items()):
            val = [r["val_loss"] for r in runs if (r["task"], r["pe"]) == (task, pe)]
            if val:
                ax.plot([e for e, _ in val[0]], np.mean([[v for _, v in c] for c in val], axis=0), marker="o", ms=3,
                        label=name, color=f"C{color}", linestyle="--" if pe.startswith("res_") else "-")
        unlearned = [TABLE1_PES[pe] for pe, c in summary[task].items() if not c["comparable"]]
        ax.set_title(TABLE1_TASKS[task] + (f" (ID < 95%: {', '.join(unlearned)})" if unlearned else ""), fontsize=9)
        losses = [y for line in ax.get_lines() for y in line.get_ydata()]
        ax.set(xlabel="epoch", yscale="log" if max(losses) > 10 * min(losses) else "linear")  # log past a decade
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (L' = 256)")
    max(axes[0], key=lambda ax: len(ax.get_lines())).legend(fontsize=8)  # the panel with every row run
    fig.suptitle(textwrap.fill(title, 55 * len(tasks)), fontsize=10)  # ~55 characters fit a panel
    _save(fig, path)


def plot_positions(runs: list[dict], path: Path, title: str, preset: ft.Preset, rule: str) -> None:
    """Where each PE breaks: test accuracy against position, one line per row (the mean over seeds, with a band
    from the lowest to the highest seed where there are several), one panel per task; the training length L, the
    first generated token x_{j+k} and chance (1/modulus) marked. Reads each run's ``per_position`` at the epoch of
    ``rule`` (one of ``ft.KEPT_RULES``)."""
    plt, tasks = _pyplot(), [t for t in TABLE1_TASKS if any(r["task"] == t for r in runs)]
    first, pos = preset.j + preset.k, np.arange(preset.j + preset.k, preset.test_len)  # x_{j+k}: the first scored
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks, strict=True):
        for color, (pe, name) in enumerate(TABLE1_PES.items()):
            cell = [p for r in runs if (r["task"], r["pe"]) == (task, pe)
                    and (p := r.get("by_select", {}).get(rule, {}).get("per_position"))]
            if not cell:
                continue
            acc = 100 * np.array([c[first:] for c in cell], dtype=float)
            label, res = name + (f" ({len(cell)} seeds)" if len(cell) > 1 else ""), pe.startswith("res_")
            ax.plot(pos, acc.mean(0), color=f"C{color}", lw=1, label=label, linestyle="--" if res else "-")
            if len(cell) > 1:
                ax.fill_between(pos, acc.min(0), acc.max(0), color=f"C{color}", alpha=0.15, lw=0)
        ax.axvline(preset.train_len, color="black", lw=0.8, linestyle=":")
        ax.text(preset.train_len, 101, " L", fontsize=8, va="bottom")
        ax.axvline(first, color="gray", lw=0.8, linestyle=":")
        ax.text(first, 101, f"x_{first}", fontsize=8, va="bottom", ha="right")
        ax.axhline(100 / preset.modulus, color="gray", lw=0.8, linestyle="--")
        ax.text(pos[-1], 100 / preset.modulus, f"chance 1/{preset.modulus}", fontsize=8, va="bottom", ha="right")
        ax.set(title=TABLE1_TASKS[task], xlabel="position", ylim=(0, 108))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="center right")
    fig.suptitle(textwrap.fill(title, 60 * len(tasks)), fontsize=10)
    _save(fig, path)


def plot_paired(paired: dict, path: Path, title: str) -> None:
    """Each pair's per-seed OOD differences Res. − base as points over a box, one panel per task, with the 0 line
    and the paper's difference marked."""
    plt, tasks = _pyplot(), [t for t in TABLE1_TASKS if t in paired]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks, strict=True):
        pairs = list(paired[task].items())
        ax.boxplot([d["diff"] for _, d in pairs], positions=range(len(pairs)), widths=0.5, showfliers=False)
        for i, (_, d) in enumerate(pairs):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(d["diff"]))
            ax.scatter(i + jitter, d["diff"], s=14, color=f"C{i}", alpha=0.8, zorder=3)
            ax.plot([i - 0.3, i + 0.3], [d["paper"]] * 2, color="red", lw=2, label="paper" if i == 0 else None)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(pairs)), [f"{TABLE1_PES[k.split('-')[0]]}\n− {TABLE1_PES[k.split('-')[1]]}"
                                          for k, _ in pairs], fontsize=8)
        ax.set_title(TABLE1_TASKS[task] + f" ({len(pairs[0][1]['diff'])} seeds)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("OOD difference (points), per seed")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 50 * len(tasks)), fontsize=10)
    _save(fig, path)


def training_units(tasks, pes, seeds, protocol: str) -> list[list[tuple[str, str, int]]]:
    """The grid's (task, PE, seed) cells grouped by the training run they share (under ``code`` a YaRN row is its
    RoPE row's run), in grid order: the unit of work a job takes."""
    units: dict[tuple, list] = {}
    for cell in ((t, pe, s) for t in tasks for pe in pes for s in seeds):
        units.setdefault((cell[0], ft.training_run_pe(cell[1], protocol), cell[2]), []).append(cell)
    return list(units.values())


def _unit_rows(unit, preset: ft.Preset, harness: ft.Harness, runs_dir: str, device: str) -> list[dict]:
    """Train (or reuse) one unit's training run and report each of its cells as the compact rows the results JSON
    keeps: the reported accuracies and test accuracy per position, every selection rule's, timing, and the curves
    (val and test at every validation: ``curves`` = {"epoch": [...], "val_loss": [...], "test_ood_acc": ...})."""
    rows, keys = [], ("epoch", *ft.CURVE_KEYS[1:])
    for task, pe, seed in unit:
        r = ft.run_posgen(task, pe, seed, preset, harness, runs_dir, device)
        validated = [h for h in r["history"] if "val_loss" in h]
        rows.append({k: r[k] for k in ("task", "pe", "seed", *keys, "trained_as", "train_s")}
                    | {"learned": r["id_acc_x4free"] >= ft.LEARNED_ID_ACC,
                       "val_loss": [[h["epoch"], h["val_loss"]] for h in validated],
                       "val_id_acc": [[h["epoch"], h["id_acc"]] for h in validated],
                       "by_select": {k: {f: v[f] for f in (*keys, "per_position") if f in v}
                                     for k, v in r["by_select"].items()},
                       "curves": {"epoch": [h["epoch"] for h in validated]} | {
                           k if k.startswith(("val_", "test_")) else f"val_{k}": [h[k] for h in validated]
                           for k in validated[0]
                           if k not in ("epoch", "loss", "lr", "elapsed_s", "test_per_position")}})
    return rows


def reselect(runs: list[dict], rule: str) -> list[dict]:
    """The runs with their reported epoch and accuracies those of selection rule ``rule`` (``ft.select_epoch``),
    read from each run's ``by_select``: no retraining."""
    if missing := [f"{r['task']} {r['pe']} seed {r['seed']}" for r in runs if rule not in r.get("by_select", {})]:
        raise ValueError(f"--select {rule}: these runs hold no test at that rule's epoch (a results file from before "
                         f"the curves were recorded?): {', '.join(missing[:3])}")
    chosen = [{k: v for k, v in r["by_select"][rule].items() if k != "per_position"} for r in runs]
    return [r | c | {"learned": c.get("id_acc_x4free", c["id_acc"]) >= ft.LEARNED_ID_ACC}
            for r, c in zip(runs, chosen, strict=True)]


def run_cells(preset: ft.Preset, harness: ft.Harness, tasks, pes, seeds, args: argparse.Namespace,
              on_unit: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Every (task, PE, seed) cell under one harness, trained or reused, in grid order. ``args.jobs`` N: N runs at
    once, each in its own process (spawned, with a 1/N share of the threads) and run directory. ``on_unit(rows so
    far)`` after each run."""
    units, jobs, rows, done, t0 = training_units(tasks, pes, seeds, harness.protocol), args.jobs, {}, 0, \
        time.perf_counter()

    def finished(unit_rows: list[dict]) -> None:
        nonlocal done
        done += 1
        rows.update({(r["task"], r["pe"], r["seed"]): r for r in unit_rows})
        # units finish in waves of `jobs` at once: the ETA counts waves, so two runs ending together don't move it
        what = f"{done}/{len(units)} training runs done, {jobs} at a time"
        ft.progress(what + ("" if harness.name == "code" else f" (harness {harness.name})"), math.ceil(done / jobs),
                    math.ceil(len(units) / jobs), time.perf_counter() - t0)
        if on_unit:
            on_unit(list(rows.values()))

    if jobs == 1:
        for unit in units:
            finished(_unit_rows(unit, preset, harness, args.runs_dir, args.device))
    else:
        with spawn_pool(jobs) as pool:
            futures = [pool.submit(_unit_rows, u, preset, harness, args.runs_dir, args.device) for u in units]
            for f in as_completed(futures):
                finished(f.result())
    return [rows[c] for u in units for c in u]


TRAINING_FIELDS = [f.name for f in dataclasses.fields(ft.Preset) if f.name not in ("name", "seeds", "tasks")]


def same_training(config: dict, preset: ft.Preset) -> bool:
    """Whether a results file's ``preset_config`` trains as ``preset`` does (its name, seeds and tasks aside: a
    file of `cot+epochs=4` is one of the former `quick`)."""
    return all(config.get(k) == v for k, v in dataclasses.asdict(preset).items() if k in TRAINING_FIELDS)


RUN_KEYS = ("task", "pe", "seed", "id_acc", "ood_acc", "trained_as", "train_s")  # what every merged run holds


def table1_file(path: str) -> dict:
    """A table1 results JSON, checked before anything reads it: a harness with every field, at least one run, each
    run's RUN_KEYS, a task and PE of Table 1's."""
    if not Path(path).exists():
        raise ValueError(f"--merge {path}: no such file")
    data = model_lib.read_json(path, "a table1 results file")
    if not (isinstance(data, dict) and isinstance(data.get("runs"), list) and isinstance(data.get("harness"), dict)
            and isinstance(data.get("preset_config"), dict)):
        raise ValueError(f"{path} is not a table1 results file (no runs, harness or preset_config)")
    lacking = [f.name for f in dataclasses.fields(ft.Harness) if f.name not in data["harness"]]
    bad = next((r for r in data["runs"] if not (isinstance(r, dict) and set(RUN_KEYS) <= r.keys()
                                                and r["task"] in TABLE1_TASKS and r["pe"] in TABLE1_PES)), None)
    if lacking or bad is not None or not data["runs"]:
        why = (f"its harness lacks {', '.join(lacking)}" if lacking else "it holds no runs" if not data["runs"] else
               f"a run lacks one of {', '.join(RUN_KEYS)} or names a task or PE not in Table 1: {str(bad)[:80]}")
        raise ValueError(f"{path} is not a table1 results file: {why}")
    return data


def merged_runs(paths: list[str], preset: ft.Preset, harness: ft.Harness) -> tuple[list[dict], list[dict]]:
    """The runs held by table1 JSONs of one preset and harness (calls on other tasks, PEs or seeds), in
    grid order, each (task, PE, seed) from one file only, reported under ``harness.select`` whatever rule the file
    reported (``reselect``); and where and how each file's call ran. A file's preset matches by its fields."""
    runs: dict[tuple, dict] = {}
    parts = []
    for path in paths:
        data = table1_file(path)
        if not same_training(data["preset_config"], preset) or data["harness"] | {"select": harness.select} != \
                dataclasses.asdict(harness):
            h, c = data["harness"], data["preset_config"]
            raise ValueError(f"{path} is of preset {data.get('preset')} ({h.get('n_layer')} layers, "
                             f"{c.get('epochs')} epochs, harness {h.get('protocol')}), not --preset {preset.name} "
                             f"harness {harness.name}: merge one preset and harness (give --epochs, --n-layer … as "
                             "it ran)")
        same_rule = data["harness"]["select"] == harness.select
        for r in data["runs"] if same_rule else reselect(data["runs"], harness.select):
            if (key := (r["task"], r["pe"], r["seed"])) in runs:
                raise ValueError(f"{path} repeats {key[0]} {key[1]} seed {key[2]}, held by an earlier --merge file")
            runs[key] = r
        parts += data.get("merged_from") or [  # a merged file: the calls it was merged from
            {"file": Path(path).name} | {k: data.get(k) for k in ("wall_s", "device", "precision", "jobs")}]
    order = [list(TABLE1_TASKS), list(TABLE1_PES), list(dict.fromkeys([*preset.seeds, *sorted(r[2] for r in runs)]))]
    return [runs[k] for k in sorted(runs, key=lambda k: [o.index(x) for o, x in zip(order, k, strict=True)])], parts


SELECT_HELP = {
    "best_val_id": "the first epoch with the best validation ID accuracy (the authors' checkpoint; the default)",
    "last": "the last epoch",
    "min_val_loss": "the lowest validation loss (its positions are mostly OOD: the val split is L' long)",
    "best_val_id_x4": "the best validation ID accuracy over positions j+k+1 … L-1 (x_4 left out)",
    "best_val_ood": "the best validation OOD accuracy, as the authors' val/acc_ood_best logs: it selects on OOD "
                    "itself, a diagnostic of what the paper may have reported, not a rule to compare PEs by"}


def by_rule(runs: list[dict]) -> dict:
    """Table 1 and its paired differences under every selection rule the runs hold (all five where the runs
    recorded curves; older results files hold best_val_id and last)."""
    rules = [rule for rule in ft.SELECT_RULES if all(rule in r.get("by_select", {}) for r in runs)]
    summaries = {rule: table1_summary(reselect(runs, rule)) for rule in rules}
    return {rule: {"table": s, "paired": paired_differences(s)} for rule, s in summaries.items()}


def table1_figures(data: dict, out: Path, preset: ft.Preset, harness: ft.Harness) -> list[Path]:
    """Beside the results JSON ``out``: Figure 3, the accuracy by position (where the runs hold it at the reported
    rule's epoch) and, with several seeds, the paired differences. Every title states the preset and the depth."""
    runs, seeds = data["runs"], data["seeds"]
    name = f"preset {preset.name}, {harness.n_layer} layers, harness {harness.name}"
    seeds_text = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    figures = [out.with_name(out.stem + "_fig3.png")]
    plot_fig3(runs, figures[0], f"Validation loss, {name}, mean over {seeds_text}")
    if any("per_position" in r.get("by_select", {}).get(harness.select, {}) for r in runs):  # since 2026-12-07
        figures.append(out.with_name(out.stem + "_positions.png"))
        plot_positions(runs, figures[-1], f"Test accuracy by position at the {harness.select} epoch, {name}, "
                       f"{seeds_text}" + (" (line: mean; band: lowest to highest seed)" if len(seeds) > 1 else ""),
                       preset, harness.select)
    if any(len(d["diff"]) > 1 for pairs in data["paired"].values() for d in pairs.values()):
        figures.append(out.with_name(out.stem + "_paired.png"))
        plot_paired(data["paired"], figures[-1], f"Res. − base OOD accuracy per seed, {name}, "
                                                 f"{harness.select} epoch")
    return figures


def cmd_table1(args: argparse.Namespace) -> int:
    """Table 1 and Figure 3: every (task × PE × seed) of a preset; finished runs are reused,
    and the results JSON is rewritten after every finished training run. ``--merge``: no training, the runs of
    earlier table1 JSONs (calls on other subsets) combined into one."""
    preset, harness = ft.preset_from_args(args), ft.harness_from_args(args)
    if args.merge and (args.seeds or args.tasks or args.pes or args.jobs != 1):
        raise ValueError("--merge combines the files' runs as they are and trains nothing: give no --seeds, --tasks, "
                         "--pes or --jobs")
    runs, parts = merged_runs(args.merge, preset, harness) if args.merge else (None, None)
    seeds = list(dict.fromkeys(r["seed"] for r in runs)) if runs else args.seeds or list(preset.seeds)
    own_select = harness.select == ft.HARNESSES[harness.protocol].select
    tag = harness.name + ("" if own_select else f"+select={harness.select}")
    suffix = "" if tag == "code" else "_" + tag.replace("+", "_").replace("=", "-")
    out = Path(args.out or f"runs/table1_{preset.name}{suffix}.json")
    t0, steps = time.perf_counter(), preset.epochs * math.ceil(preset.n_train / preset.batch_size)

    def results(runs: list[dict]) -> dict:
        summary, train_s = table1_summary(runs), sum(r["train_s"] for r in runs)
        return {
            "preset": preset.name, "harness": dataclasses.asdict(harness), "seeds": seeds,
            "wall_s": time.perf_counter() - t0, "device": device_name(args.device), "threads": torch.get_num_threads(),
            "precision": preset.precision if torch.device(args.device).type == "cuda" else "fp32", "jobs": args.jobs,
            "steps_per_s": steps * sum(r["trained_as"] == r["pe"] for r in runs) / train_s if train_s else None,
            "preset_config": dataclasses.asdict(preset), "table": summary, "paired": paired_differences(summary),
            "paper_table1": {t: {pe: {"ood_mean": m, "ood_var": v} for pe, (m, v) in row.items()}
                             for t, row in PAPER_TABLE1.items()}, "by_rule": by_rule(runs), "runs": runs} | (
            {"device": ", ".join(dict.fromkeys(str(p["device"]) for p in parts)), "merged_from": parts,
             "jobs": None, "threads": None,
             "precision": ", ".join(dict.fromkeys(str(p["precision"]) for p in parts))} if parts else {})

    if not args.merge:
        runs = run_cells(preset, harness, [t for t in TABLE1_TASKS if t in (args.tasks or preset.tasks)],
                         [pe for pe in TABLE1_PES if pe in (args.pes or TABLE1_PES)], seeds, args,
                         lambda runs: model_lib.write_json(out, results(runs)))
    model_lib.write_json(out, data := results(runs))
    print(table1_report(data))
    if args.every_rule and len(data["by_rule"]) < len(ft.SELECT_RULES):
        print(f"\nOnly {', '.join(data['by_rule'])} of the {len(ft.SELECT_RULES)} selection rules: these runs hold no "
              "curves (results files from before they were recorded), so the other rules cannot be read.")
    for rule, d in data["by_rule"].items() if args.every_rule else ():
        print(f"\nSelection rule {rule}: {SELECT_HELP[rule]}\n" + "\n".join([
            format_table1(d["table"]), *seed_lines(d["table"]), *paired_lines(d["table"], d["paired"])]))
    n_runs, train_s = sum(r["trained_as"] == r["pe"] for r in runs), ft.fmt_s(sum(r["train_s"] for r in runs))
    if parts:
        calls = "; ".join(f"{p['file']}: {p['device']}, {p['jobs']} run(s) at a time" for p in parts)
        print(f"Merged {len(parts)} files ({calls}); training the {n_runs} runs took {train_s} in all.")
    else:
        print(f"This call took {ft.fmt_s(time.perf_counter() - t0)}; training the {n_runs} runs took {train_s} in "
              f"all (a run reused from an earlier call counts the time it took then); {torch.get_num_threads()} "
              f"threads, {args.jobs} run(s) at a time.")
    figures = table1_figures(data, out, preset, harness)
    print(f"wrote {out} and {', '.join(map(str, figures))}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# Which harness settings the ordering depends on (ablation), and Table 1 against the training budget.


# One harness item switched off at a time (evaluate.py ablation); "select=last" reads the same runs as "full".
ABLATION = {"full": {}, "select=last": {"select": "last"}, "freeze_ffn=false": {"freeze_ffn": False},
            "split=disjoint": {"split": "disjoint"}, "attention=sdpa,tie_head=false": {"attention": "sdpa",
                                                                                      "tie_head": False},
            "schedule=ours": {"schedule": "ours"}}


def cmd_ablation(args: argparse.Namespace) -> int:
    """Which harness settings does Table 1's ordering depend on: the full ``code`` harness, then each item
    switched off on its own, all four PEs, seed-major. The JSON is rewritten after every variant, and a later call
    keeps what it holds for the same preset (every variant, seed and task), training only the (seed, task) cells a
    requested variant lacks: a stopped run loses only the variant it was in. "seeds": those complete in every
    variant and task held."""
    preset, variants = ft.preset_from_args(args), [v for v in ABLATION if v in (args.variants or ABLATION)]
    out = Path(args.out or "runs/table1_ablation" + ("" if preset.name == "quick" else f"_{preset.name}") + ".json")
    old = model_lib.read_json(out, "an ablation results file") if out.is_file() else {"variants": []}
    full = ft.harness_from_args(args)  # the code harness at --n-layer's depth
    if not (isinstance(old, dict) and isinstance(old.get("variants"), list) and (not old["variants"] or (
            same_training(old.get("preset_config", {}), preset)
            and all(v.get("harness", {}).get("n_layer") == full.n_layer for v in old["variants"])))):
        raise ValueError(f"{out} is not an ablation results file of preset {preset.name} at {full.n_layer} layers; "
                         "give another --out")
    kept = {v["name"]: v["runs"] for v in old["variants"]}  # every (variant, seed, task) held is kept, not rerun
    runs = {v: kept.get(v, []) for v in ABLATION if v in kept or v in variants}
    names = list(runs)
    harness = {v: dataclasses.replace(full, **ABLATION[v]) for v in names}
    seeds = list(dict.fromkeys([r["seed"] for rs in runs.values() for r in rs] + list(args.seeds)))
    tasks = list(dict.fromkeys([r["task"] for rs in runs.values() for r in rs] + list(args.tasks)))

    def has(v: str, seed: int, task: str) -> bool:
        return any((r["seed"], r["task"]) == (seed, task) for r in runs[v])

    for seed, v in ((seed, v) for seed in seeds for v in variants):
        if todo := [t for t in args.tasks if not has(v, seed, t)]:
            runs[v] += run_cells(preset, harness[v], todo, list(TABLE1_PES), [seed], args)
        results = [{"name": v, "harness": dataclasses.asdict(harness[v]), "runs": runs[v],
                    "paired": paired_differences(table1_summary(runs[v]))} for v in names]
        done = [s for s in seeds if all(has(v, s, t) for v in names for t in tasks)]
        model_lib.write_json(out, {"preset": preset.name, "preset_config": dataclasses.asdict(preset),
                                   "seeds": done, "variants": results})
    print(f"Ablation, preset {preset.name}, {full.n_layer} layers, seeds {', '.join(map(str, done))}:")
    print(format_ablation(results))
    print(f"wrote {out}")
    return 0


def format_ablation(results: list[dict]) -> str:
    """Per variant and task: each PE's OOD per seed, and the mean ± std paired Res. − base differences."""
    lines = ["| variant | task | " + " | ".join(f"{n} OOD per seed (ID mean)" for n in TABLE1_PES.values())
             + " | Res. RoPE − RoPE | Res. YaRN − YaRN |", "|---" * 8 + "|"]
    for v in results:
        summary = table1_summary(v["runs"])
        for task, cells in ((t, summary[t]) for t in TABLE1_TASKS if t in summary):  # the paper's row and column order
            ood = [", ".join(f"{x:.1f}" for x in c["ood"]) + f" ({c['id_mean']:.1f})" if c else "not run"
                   for c in map(cells.get, TABLE1_PES)]
            diff = [f"{d['mean']:+.1f} ± {d['std']:.1f}" + ("" if d["comparable"] else " n/c")
                    for d in v["paired"].get(task, {}).values()]
            lines.append(f"| {v['name']} | {TABLE1_TASKS[task]} | " + " | ".join(ood + diff) + " |")
    return "\n".join(lines)


# Table 1 against training budget: the full harness's paired differences at every budget the ablation JSONs hold.
BUDGET_SAME = ("name", "epochs", "tasks", "seeds")  # preset fields a budget may change; the rest must agree


def budget_rows(paths: list[str | Path]) -> list[dict]:
    """Per (training epochs, task, pair): the full harness's paired Res. − base OOD differences per seed, mean ±
    std, the standard error and whether |mean| > 2 SE, both rows' mean OOD and ID accuracy, whether both rows
    learned the rule ("comparable"), and the paper's difference, from ablation results files of one model
    (presets that differ only in epochs), ordered by epochs."""
    rows, model = [], None
    for path in paths:
        data = model_lib.read_json(path, "an ablation results file")
        full = next((v for v in data.get("variants", []) if v["name"] == "full"), None) if isinstance(data, dict) \
            else None
        if full is None or "preset_config" not in data or "harness" not in full:
            raise ValueError(f"{path} is not an ablation results file with the full harness")
        config = {k: v for k, v in data["preset_config"].items() if k not in BUDGET_SAME} | {
            "n_layer": full["harness"]["n_layer"], "d_model": data["preset_config"]["d_model"]}
        if model not in (None, config):
            raise ValueError(f"{path} trains another model than {paths[0]}: budgets compare one model")
        model, summary = config, table1_summary(full["runs"])
        for task, pairs in paired_differences(summary).items():
            for key, d in pairs.items():
                res, base = (summary[task][pe] for pe in key.split("-"))
                rows.append({"epochs": data["preset_config"]["epochs"], "task": task, "pair": key, **d,
                             "n_layer": config["n_layer"], "d_model": config["d_model"], "se": d.get("se", 0.0),
                             "id_res": res["id_mean"], "id_base": base["id_mean"], "ood_res": res["ood_mean"],
                             "ood_base": base["ood_mean"], "separated": "se" in d and abs(d["mean"]) > 2 * d["se"]})
    return sorted(rows, key=lambda r: (r["epochs"], list(TABLE1_TASKS).index(r["task"]), r["pair"]))


def format_budget(rows: list[dict]) -> str:
    """The budget table: one line per (task, pair, epochs); "n/c" where a row's mean ID is under 95 % (not
    comparable: the rule was not learned, so the difference does not measure the PE)."""
    lines = ["| task | pair | epochs | per seed | mean ± std | > 2 SE | ID (Res., base) | paper |", "|---" * 8 + "|"]
    for r in sorted(rows, key=lambda r: (list(TABLE1_TASKS).index(r["task"]), r["pair"], r["epochs"])):
        res, base = (TABLE1_PES[p] for p in r["pair"].split("-"))
        per_seed = ", ".join(f"{x:+.2f}" for x in r["diff"]) + f" (seeds {', '.join(map(str, r['seeds']))})"
        lines.append(f"| {TABLE1_TASKS[r['task']]} | {res} − {base} | {r['epochs']} | {per_seed} | {r['mean']:+.2f} ± "
                     f"{r['std']:.2f} | {'yes' if r['separated'] else 'no'}{'' if r['comparable'] else ' (n/c)'} | "
                     f"{r['id_res']:.2f}, {r['id_base']:.2f} | "
                     f"{r['paper']:+.2f} |")
    return "\n".join(lines)


def plot_budget(rows: list[dict], path: str | Path) -> None:
    """Per task, against training epochs (log axis): the paired OOD differences (seeds as points, mean ± std as a
    line and band, the paper's difference dashed; a hollow mean where a row is under 95 % ID), beneath them the
    OOD levels of both rows of each pair, and the mean ID accuracy of the two."""
    plt, tasks = _pyplot(), [t for t in TABLE1_TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(3, len(tasks), figsize=(5 * len(tasks), 8), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1]})
    for col, task in enumerate(tasks):
        top, mid, bottom = axes[0][col], axes[1][col], axes[2][col]
        for color, pair in enumerate(("res_rope-rope", "res_yarn-yarn")):
            rs = [r for r in rows if (r["task"], r["pair"]) == (task, pair)]
            if not rs:
                continue
            x, mean, std = (np.array([r[k] for r in rs]) for k in ("epochs", "mean", "std"))
            res, base = (TABLE1_PES[p] for p in pair.split("-"))
            top.plot(x, mean, color=f"C{color}", label=f"{res} − {base}")
            learned = np.array([r["comparable"] for r in rs])
            top.scatter(x[learned], mean[learned], color=f"C{color}", zorder=3)
            top.scatter(x[~learned], mean[~learned], facecolors="white", edgecolors=f"C{color}", zorder=3, s=40)
            top.fill_between(x, mean - std, mean + std, color=f"C{color}", alpha=0.2)
            top.scatter([e for r in rs for e in [r["epochs"]] * len(r["diff"])], [d for r in rs for d in r["diff"]],
                        color=f"C{color}", s=12, alpha=0.6)
            top.axhline(rs[0]["paper"], color=f"C{color}", linestyle="--", linewidth=1, label=f"paper {res} − {base}")
            mid.plot(x, [r["ood_res"] for r in rs], color=f"C{color}", marker="o", linestyle="--", label=res)
            mid.plot(x, [r["ood_base"] for r in rs], color=f"C{color}", marker="o", label=base)
            bottom.plot(x, [(r["id_res"] + r["id_base"]) / 2 for r in rs], color=f"C{color}", marker="o")
        top.axhline(0, color="black", linewidth=0.5)
        top.set(title=TABLE1_TASKS[task], ylabel="Res. − base OOD (points)")
        mid.set(ylabel="OOD (%), mean")
        bottom.axhline(100 * ft.LEARNED_ID_ACC, color="gray", linestyle=":", linewidth=1)
        bottom.set(xlabel="training epochs (log scale)", ylabel="mean ID (%)", xscale="log")
        bottom.set_xticks(sorted({r["epochs"] for r in rows}), labels=sorted({r["epochs"] for r in rows}))
        bottom.minorticks_off()
        top.legend(fontsize=7)
        mid.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Table 1 against training budget: the authors' harness, d_model {rows[0]['d_model']}, "
                 f"{rows[0]['n_layer']} layers (points: seeds; band: ± std; "
                 "hollow: a row under 95 % ID)", fontsize=10)
    _save(fig, path)


def cmd_budget(args: argparse.Namespace) -> int:
    """The paired differences against training budget: table on stdout, figure and JSON at --out."""
    paths = args.inputs or sorted(Path("results").glob("table1_ablation*.json"))
    if not paths:
        raise ValueError("no ablation results files: give --inputs")
    rows = budget_rows(paths)
    print(format_budget(rows))
    plot_budget(rows, args.out)
    model_lib.write_json(Path(args.out).with_suffix(".json"), {"inputs": [str(p) for p in paths], "rows": rows})
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# LLaMA evaluations of Sec. 6.2: perplexity against context length, passkey retrieval.


LLAMA_DEFAULT_PES = ("rope", "ntk:2", "dynamic_ntk", "yarn:2", "yarn:4", "res_yarn:2", "res_yarn:4")
PASSKEY_DEFAULT_PES = ("rope", "yarn:2", "res_yarn:2")


def window_nlls(llama: model_lib.Llama, ids: torch.Tensor, length: int, stride: int | None) -> list[torch.Tensor]:
    """YaRN's sliding-window evaluation of one document at one context length: the per-token NLLs each window
    scores. Windows of ``length`` tokens start every ``stride`` tokens and score only the tokens no earlier
    window scored (the first scores all its T−1 predictions); ``stride=None`` is truncate mode, one window of
    the first ``length`` tokens."""
    if stride is None:
        return [llama.token_nll(ids[None, :length])[0]]
    out, prev_end = [], 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + length, ids.numel())
        nll = llama.token_nll(ids[None, begin:end])[0]
        out.append(nll[-min(end - prev_end, nll.numel()):])
        prev_end = end
        if end == ids.numel():
            break
    return out


def perplexity(llama: model_lib.Llama, docs: list[tuple[str, list[int]]], pes: dict[str, PE], lengths: list[int],
               stride: int | None, device: torch.device) -> dict:
    """Perplexity exp(mean window NLL) per PE and context length, overall and per document (``window_nlls``)."""
    t0, results, done, total = time.perf_counter(), {}, 0, len(pes) * len(docs) * sum(lengths)
    for spec, pe in pes.items():
        llama.set_pe(pe)
        window_means, per_doc = {n: [] for n in lengths}, {n: [] for n in lengths}
        for i, (name, ids) in enumerate(docs):
            for n in lengths:
                with torch.no_grad():
                    means = [float(w.double().mean()) for w in window_nlls(llama, torch.tensor(ids, device=device),
                                                                          n, stride)]
                window_means[n] += means
                per_doc[n].append(math.exp(sum(means) / len(means)))
                done += n  # work counted in tokens
                ft.progress(f"[perplexity] {spec} doc {i + 1}/{len(docs)} ({name}) at {n}: ppl {per_doc[n][-1]:.3f}",
                            done, total, time.perf_counter() - t0)
        ppl = {str(n): math.exp(sum(v) / len(v)) for n, v in window_means.items()}
        results[spec] = {"label": pe.label(), "pe": str(pe), "settings": dataclasses.asdict(pe), "perplexity": ppl,
                         "per_document": {str(n): v for n, v in per_doc.items()}}
        print(f"{spec:<14} " + "  ".join(f"{n}: {p:.3f}" for n, p in ppl.items()), flush=True)
    return {"seconds": round(time.perf_counter() - t0, 1), "results": results}


def _llama(args: argparse.Namespace, max_len: int) -> tuple[model_lib.Llama, dict[str, PE]]:
    """The model of ``--model`` in ``--dtype`` on ``--device`` (after refusing a length that cannot fit), and the
    PEs of ``--pe`` with the shared YaRN / L options."""
    fields = {"original_len": args.original_length, "alpha": args.alpha, "beta": args.beta, "ramp": args.ramp}
    pes = {spec: PE.parse(spec, **fields) for spec in args.pe}
    resonance.check_memory(max_len * 4096 * 4, f"a {max_len}-token forward")  # one layer's activations: a lower bound
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    return model_lib.load_llama(args.model, dtype=dtype).to(args.device), pes


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Perplexity vs length; on CPU each document's first N tokens (``--truncate``), else YaRN's sliding window."""
    lengths = sorted(set(args.lengths))
    stride = None if args.truncate or (args.stride is None and args.device.type == "cpu") else (args.stride or 256)
    docs = ft.read_documents(args.text) if args.text else ft.stdlib_documents(args.stdlib_modules)
    tokenizer = model_lib.load_tokenizer(args.model)
    # truncate mode needs every document to fill the longest window, as YaRN keeps documents ≥ that many tokens
    keep = [(name, ids) for name, ids in ((n, tokenizer.encode(t).ids) for n, t in docs)
            if stride or len(ids) >= lengths[-1]][:args.samples]
    if not keep:
        raise ValueError(f"no document has >= {lengths[-1]} tokens (the longest --lengths) for truncate mode")
    llama, pes = _llama(args, lengths[-1])
    report = {"settings": {k: str(v) for k, v in vars(args).items() if k != "func"}, "model": args.model,
              "mode": f"sliding window, stride {stride}" if stride else "truncate", "lengths": lengths,
              "trained_context": llama.train_len, "documents": [{"name": n, "tokens": len(i)} for n, i in keep],
              "torch": torch.__version__, **perplexity(llama, keep, pes, lengths, stride, args.device)}
    model_lib.write_json(args.out, report)
    if args.png:
        curves = {r["label"]: ({int(n): p for n, p in r["perplexity"].items()}, r["settings"]["resonance"], i)
                  for i, r in enumerate(report["results"].values())}
        plot_lengths(curves, llama.train_len, "perplexity", f"{args.model}, no fine-tuning: {len(keep)} documents, "
                     f"{report['mode']}", args.png)
    return 0


def plot_lengths(curves: dict[str, tuple[dict[int, float], bool, int]], train_len: int, ylabel: str, title: str,
                 path: str) -> None:
    """Fig. 4's layout: a value vs context length, one line per label (values, dashed?, colour index), L marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (values, dashed, color) in curves.items():
        ax.plot(sorted(values), [values[n] for n in sorted(values)], "--" if dashed else "-", marker="o", label=label,
                color=f"C{color}")
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set(yscale="log", xlabel="context length (tokens); dotted: the trained context L", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.")


PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def passkey_prompt(n_filler: int, depth: float, key: int) -> str:
    """YaRN's passkey prompt (after landmark attention): the task, ``n_filler`` characters of repeated filler with
    the needle "The pass key is {key}. Remember it. {key} is the pass key." at ``depth`` ∈ [0, 1] of it, the
    question. As there, the text after the needle restarts the filler from its beginning."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    filler = " ".join([PASSKEY_FILLER] * (n_filler // len(PASSKEY_FILLER) + 2))
    before = round(depth * n_filler)
    return "\n".join([PASSKEY_TASK, filler[:before],
                      f"The pass key is {key}. Remember it. {key} is the pass key.",
                      filler[:n_filler - before], "What is the pass key? The pass key is"])


def passkey_filler_chars(tokenizer, length: int) -> int:
    """The most filler characters whose prompt stays within ``length`` tokens (bisection on the tokenizer)."""
    def n_tokens(chars: int) -> int:
        return len(tokenizer.encode(passkey_prompt(chars, 0.5, 99999)).ids)

    if n_tokens(0) > length:
        raise ValueError(f"--lengths {length} is shorter than the passkey prompt without filler")
    lo, hi = 0, 8 * length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if n_tokens(mid) <= length else (lo, mid - 1)
    return lo


def passkey(llama: model_lib.Llama, tokenizer, spec: str, lengths: list[int], depths: list[float], trials: int,
            new_tokens: int, seed: int, device, progress: Callable[[str, int], None] = lambda what, n: None) -> dict:
    """YaRN's passkey retrieval with the model's PE: per (length, depth), ``trials`` greedy answers (KV cache),
    correct if the first number is the key; the keys come from ``seed`` (the same for every PE)."""
    rng, table, fill = random.Random(seed), {}, {n: passkey_filler_chars(tokenizer, n) for n in lengths}
    for n, depth in ((n, depth) for n in lengths for depth in depths):
        cell = []
        for key in [rng.randint(10000, 99999) for _ in range(trials)]:
            ids = tokenizer.encode(passkey_prompt(fill[n], depth, key)).ids
            answer = tokenizer.decode(llama.generate(torch.tensor([ids], device=device), new_tokens)[0, len(ids):]
                                      .tolist())
            found = re.search(r"\d+", answer)
            cell.append({"key": key, "tokens": len(ids), "answer": answer,
                         "correct": found is not None and int(found.group()) == key})
            progress(f"[passkey] {spec} length {n} depth {depth:g}: {answer!r} "
                     f"{'ok' if cell[-1]['correct'] else 'wrong'}", n)
        table[f"{n}@{depth:g}"] = {"length": n, "depth": depth, "trials": cell,
                                   "accuracy": sum(t["correct"] for t in cell) / len(cell)}
    return {"label": llama.pe.label(), "pe": str(llama.pe), "settings": dataclasses.asdict(llama.pe),
            "by_length_depth": table, "accuracy_by_length": {str(n): float(np.mean(
                [v["accuracy"] for v in table.values() if v["length"] == n])) for n in lengths}}


def cmd_passkey(args: argparse.Namespace) -> int:
    """YaRN's passkey retrieval for several PEs (``passkey``), accuracy per length and needle depth."""
    llama, pes = _llama(args, max(args.lengths) + args.new_tokens)
    tokenizer = model_lib.load_tokenizer(args.model)
    t0, results, done = time.perf_counter(), {}, [0]
    total = len(pes) * len(args.depths) * args.trials * sum(args.lengths)  # work counted in tokens

    def progress(what: str, n: int) -> None:
        done[0] += n
        ft.progress(what, done[0], total, time.perf_counter() - t0)

    for spec, pe in pes.items():
        llama.set_pe(pe)
        results[spec] = passkey(llama, tokenizer, spec, args.lengths, args.depths, args.trials, args.new_tokens,
                                args.seed, args.device, progress)
    print(f"{'PE':<14}" + "".join(f"{n:>8}" for n in args.lengths) + "   (accuracy, mean over depths)")
    for spec, r in results.items():
        print(f"{spec:<14}" + "".join(f"{r['accuracy_by_length'][str(n)]:>8.2f}" for n in args.lengths))
    model_lib.write_json(args.out, {"settings": {k: str(v) for k, v in vars(args).items() if k != "func"},
                                    "model": args.model, "seconds": round(time.perf_counter() - t0, 1),
                                    "results": results})
    return 0


# ----------------------------------------------------------------------------------------------------------
# Figure 4 after fine-tuning (Sec. 6.2, App. C.2): evaluate.py fig4, resumable stage by stage.


def cmd_fig4(args: argparse.Namespace) -> int:
    """Fig. 4 after fine-tuning: each PE of ``--pes`` fine-tunes ``--model`` on the same text, order and seed
    (``finetune.finetune_llama``, App. C.2's recipe, resumable in ``--runs-dir``/fig4/<pe>); the un-tuned model
    (the PE swapped in) and each tuned one are scored on the held-out documents no fine-tuning saw (``perplexity``:
    the first N tokens, one window per document); each Res. − base pair gets the mean per-document difference
    and its 95 % bootstrap interval. The JSON is rewritten after each stage; a later call with the same settings
    keeps the stages it holds."""
    settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in ("func", "out", "png")}
    old = model_lib.read_json(args.out, "a fig4 results file") if Path(args.out).is_file() else {}
    report = old if old.get("settings") == settings else {"settings": settings, "device": device_name(args.device)}
    lengths, root, t0 = sorted(args.lengths), Path(args.runs_dir) / "fig4", time.perf_counter()
    resonance.check_memory(lengths[-1] * 4096 * 4, "the longest evaluation forward")
    for spec in args.pes:  # a PE the exported model could not carry fails now, before any training
        net = model_lib.load_llama(args.model, spec)
        model_lib.rope_scaling_of(net.pe, net.train_len, net.config.head_dim, net.config.rope_theta)
    for spec in args.pes:
        run = ft.LlamaRun(model=str(args.model), pe=spec, seq_len=args.seq_len, train_tokens=args.tokens,
                          batch_size=args.batch_size, micro_batch=args.micro_batch, text=args.text,
                          heldout_docs=args.heldout_docs, heldout_min_tokens=lengths[-1], seed=args.seed,
                          grad_checkpointing=args.seq_len > 1024)
        if spec not in report.setdefault("finetune", {}):
            log = ft.finetune_llama(run, root / spec.replace(":", "-s"), device=str(args.device))
            wall, tokens = log["history"][-1]["elapsed_s"], log["steps"] * args.batch_size * log["seq_len"]
            report["finetune"][spec] = {"steps": log["steps"], "train_tokens": tokens, "wall_s": wall,
                                        "tokens_per_s": tokens / wall, "loss_first": log["history"][0]["loss"],
                                        "loss_last": log["history"][-1]["loss"]}
            model_lib.write_json(args.out, report)
    tokenizer = model_lib.load_tokenizer(args.model)  # every PE held out the same documents: same text and seed
    heldout = ft.read_documents([str(root / args.pes[0].replace(":", "-s") / "heldout.jsonl")])
    docs = [(name, tokenizer.encode(text, add_special_tokens=False).ids) for name, text in heldout]
    for when, spec in ((w, s) for w in ("before", "after") for s in args.pes):
        if spec not in report.setdefault("perplexity", {}).setdefault(when, {}):
            path = args.model if when == "before" else root / spec.replace(":", "-s") / "model"
            llama = model_lib.load_llama(path, spec if when == "before" else None).to(args.device)  # tuned: own PE
            report["perplexity"][when][spec] = perplexity(llama, docs, {spec: llama.pe}, lengths, None,
                                                          args.device)["results"][spec]
            report["original_len"] = llama.train_len
            model_lib.write_json(args.out, report)
    for when, res, n in ((w, r, str(n)) for w in ("before", "after") for r in args.pes for n in lengths):
        if res.startswith("res_") and (base := res.removeprefix("res_")) in args.pes:
            ppl = report["perplexity"][when]
            diffs = [a - b for a, b in zip(ppl[res]["per_document"][n], ppl[base]["per_document"][n], strict=True)]
            lo, hi = bootstrap_interval(diffs)
            report.setdefault("differences", {}).setdefault(f"{res} - {base}", {}).setdefault(when, {})[n] = {
                "mean": float(np.mean(diffs)), "ci95": [lo, hi], "separated": lo > 0 or hi < 0}
            print(f"{res} - {base} ({when} fine-tuning) at {n}: {np.mean(diffs):+.4f} [{lo:+.4f}, {hi:+.4f}]")
    report["wall_s_this_call"] = time.perf_counter() - t0
    model_lib.write_json(args.out, report)
    if args.png:
        curves = {f"{PE.parse(s).label()}, {'no FT' if w == 'before' else 'FT'}": (
            {int(n): p for n, p in r["perplexity"].items()}, w == "before", i)
            for w, by_pe in report["perplexity"].items() for i, (s, r) in enumerate(by_pe.items())}
        plot_lengths(curves, report["original_len"], "perplexity (held-out documents)",
                     f"Fig. 4 after fine-tuning {args.model}: {args.tokens} tokens per PE; dashed: before", args.png)
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return 0


# ----------------------------------------------------------------------------------------------------------
# speed: each benchmark returns rows {"name", "ours_s", "baseline", "baseline_s", "ratio", "target", "ok"}.
# Ratios, not absolute times, because the machine is shared and noisy; both sides run in the same process,
# alternately, so a change in the machine's load hits both alike.


def _best_times(*fns: Callable[[], object], repeat: int = 5) -> list[float]:
    """Best wall time of each function over ``repeat`` alternating rounds."""
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _row(name: str, ours_s: float, baseline: str, baseline_s: float, target: str, ok: bool) -> dict:
    return {"name": name, "ours_s": ours_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": ours_s / baseline_s, "target": target, "ok": bool(ok)}


def bench_rope_table(device: str = "cpu") -> list[dict]:
    """A Resonance cos+sin table for d = 128, L' = 131072 on one thread, against a float32 outer product
    ``arange ⊗ θ → cos, sin``; and ``apply_rope`` with Resonance against RoPE tables (precomputed: equal cost)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n, theta = 131072, resonance.resonance(resonance.rope_inv_freq(128))
        pos = torch.arange(n)

        def outer():
            ang = torch.outer(torch.arange(n, dtype=torch.float32), theta.float())
            return ang.cos(), ang.sin()

        ours, t_outer = _best_times(lambda: resonance.rope_cos_sin(theta, pos), outer)
        cos, sin = resonance.rope_cos_sin(theta, pos)
        lam = torch.round(2 * math.pi / theta).long().tolist()
        exact = all(torch.equal(t[p:, j], t[:n - p, j]) for t in (cos, sin) for j, p in enumerate(lam))
        x = torch.randn(1, 32, 4096, 128)
        plain, res = (resonance.rope_cos_sin(t, torch.arange(4096)) for t in (resonance.rope_inv_freq(128), theta))
        t_res, t_plain = _best_times(lambda: resonance.apply_rope(x, *res), lambda: resonance.apply_rope(x, *plain),
                                     repeat=15)
    finally:
        torch.set_num_threads(threads)
    return [_row("rope_table Resonance d=128 L'=131072", ours, "outer product fp32", t_outer,
                 "<= 2.5x, exactly periodic", ours <= 2.5 * t_outer and exact),
            _row("apply_rope, Resonance tables", t_res, "RoPE tables", t_plain, "<= 1.02x", t_res <= 1.02 * t_plain)]


def bench_posgen(device: str = "cpu") -> list[dict]:
    """Generating the paper's 12,000 sequences × 256 tokens (j=1, k=3, mod 17), per task: at most 0.1 s."""
    prefix = np.random.default_rng(0).integers(0, 17, size=(12000, 4))
    rows = []
    for task in posgen.TASKS:
        (t,) = _best_times(lambda task=task: posgen.generate(task, prefix, 256))
        rows.append(_row(f"posgen {task} 12000x256", t, "0.1 s budget", 0.1, "<= 1x", t <= 0.1))
    return rows


def bench_train_mfu(device: str = "cpu", preset: str = "paper") -> list[dict]:
    """Information, no target: paper-size PosGen training steps/s and model-FLOPs utilisation, on ``device``.

    ``finetune.posgen_step`` on App. C.1's model under the full ``code`` harness (frozen FFN, T5 attention), B =
    128 sequences of T = 64, the paper preset's precision (TF32 matmuls on CUDA, compiled there; fp32 on CPU).
    Model FLOPs per step: B·T × ``finetune.model_flops_per_token`` (PaLM's count). MFU = those FLOPs per second
    over the 2048³ matmul rate measured here on the same device, threads and precision."""
    torch.manual_seed(0)
    dev, preset, B, T = torch.device(device), ft.PRESETS[preset], 128, 64
    net = ft.posgen_model(ft.run_meta("recursive", "rope", 0, preset, ft.HARNESSES["code"]))[0].to(dev)
    opt, sched = ft.posgen_optimizer(net, preset, "authors", 10**6)
    x, y = (t.to(dev) for t in ft.lm_batch(torch.randint(0, preset.modulus, (B, T)), preset.modulus, 4))
    fwd = torch.compile(net) if dev.type == "cuda" else net
    a, b = torch.randn(2048, 2048, device=dev), torch.randn(2048, 2048, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def steps(n: int) -> None:
        for _ in range(n):
            ft.posgen_step(fwd, opt, sched, x, y, preset.precision)
        sync()

    steps(3)  # warm-up: allocator, optimizer state, compilation
    n = 50 if dev.type == "cuda" else 2
    t_step, t_mm = _best_times(lambda: steps(n), lambda: (a @ b, sync()), repeat=3)
    t_step /= n
    flops = B * T * ft.model_flops_per_token(net, net.config.n_layer, net.config.d_model, T)
    rate = 2 * 2048**3 / t_mm
    return [_row(f"train {preset.name}-size: {1 / t_step:.1f} steps/s, MFU {100 * flops / t_step / rate:.0f}%", t_step,
                 f"step at matmul rate ({rate / 1e9:.0f} GFLOP/s, {device_name(dev)})", flops / rate, "info", True)]


def bench_llama_forward(device: str = "cpu") -> list[dict]:
    """SmolLM2-135M forward (logits at every position), fp32, at 2K and 8K tokens: ours against transformers'
    LlamaForCausalLM (sdpa) on the same GGUF weights, the same loss required; then the peak memory (VmHWM) of a
    16K-token perplexity forward (``token_nll``) in a fresh process."""
    from transformers import AutoModelForCausalLM

    path = Path(model_lib.smollm2_path())
    ours = model_lib.load_llama(path)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    ids = model_lib.load_tokenizer(path).encode(ft.stdlib_documents(1)[0][1]).ids
    rows = []
    for T in (2048, 8192):
        x, out = torch.tensor([ids[:T]]), {}
        with torch.no_grad():
            t_ours, t_hf = _best_times(lambda x=x, out=out: out.update(ours=ours(x)),
                                       lambda x=x, out=out: out.update(hf=hf(x).logits), repeat=2)
        # transformers forms its RoPE angles in float32, so its logits drift from ours (exact) with position
        # (3e-3 at 8K); the loss they give must still agree
        nll = [torch.nn.functional.cross_entropy(out[k][0, :-1], x[0, 1:]).item() for k in ("ours", "hf")]
        rows.append(_row(f"llama_forward SmolLM2 T={T}", t_ours, "transformers sdpa fp32", t_hf,
                         "tokens/s >= 0.9x, same loss", t_ours <= t_hf / 0.9 and abs(nll[0] - nll[1]) <= 1e-4 * nll[1]))
    probe = ("import torch, model\nm = model.load_llama('smollm2')\nwith torch.no_grad():\n"
             "    m.token_nll(torch.randint(0, m.config.vocab_size, (1, 16384)))\n"
             "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent, check=True,
                          capture_output=True, text=True)
    peak = int(done.stdout.split()[-1]) / 2**20  # VmHWM is in KiB
    return [*rows, _row("llama 16K token_nll peak RSS (GiB)", peak, "2 GiB", 2.0, "< 2 GiB", peak < 2)]


SPEED_BENCHES = {"rope_table": bench_rope_table, "posgen": bench_posgen, "train_mfu": bench_train_mfu,
                 "llama_forward": bench_llama_forward}


def cmd_speed(args: argparse.Namespace) -> int:
    print(f"{'benchmark':<40} {'ours':>10} {'baseline':<34} {'base':>10} {'ratio':>8}  target / ok")
    all_ok = True
    for name in args.only or SPEED_BENCHES:
        for r in SPEED_BENCHES[name](args.device):
            all_ok &= r["ok"]
            print(f"{r['name']:<40} {r['ours_s']:>9.4f}s {r['baseline']:<34} {r['baseline_s']:>9.4f}s "
                  f"{r['ratio']:>7.3f}x  {r['target']} {'ok' if r['ok'] else 'MISSED'}", flush=True)
    return 0 if all_ok else 1


# ----------------------------------------------------------------------------------------------------------
# Helpers: figures, worker processes, the device a result ran on; then the command line.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def spawn_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes (safe with CUDA), each with a 1/jobs share of this process's threads."""
    return ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                               initargs=(max(1, torch.get_num_threads() // jobs),))


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model and the kernel set PyTorch dispatches to (AVX2, AVX512, …): CPU runs of
    one seed give other numbers on another CPU (reduction order), so a result records which one it ran on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        model = platform.processor() or platform.machine()
    return f"cpu ({model}, {torch.backends.cpu.get_cpu_capability()} kernels)"


def _add_llama_args(p: argparse.ArgumentParser, pes: tuple[str, ...], lengths: list[int]) -> None:
    p.add_argument("--model", default="smollm2", help="HF directory, .gguf file or 'smollm2' (default %(default)s)")
    p.add_argument("--pe", nargs="+", default=list(pes), metavar="SPEC", type=pe_spelling,
                   help=f"PEs as [res_]METHOD[:FACTOR], METHOD one of {resonance.METHODS} (default %(default)s)")
    p.add_argument("--original-length", type=number(int, 1),
                   help="L, the trained context the scalings start from (default: the model's, 8192 for SmolLM2)")
    p.add_argument("--alpha", type=number(float, 0), help="YaRN α = HF beta_slow (default 1)")
    p.add_argument("--beta", type=number(float, 0), help="YaRN β = HF beta_fast (default 32; Llama 3's: 4)")
    p.add_argument("--ramp", default="index", choices=resonance.RAMPS, help="YaRN ramp (default %(default)s, as HF)")
    p.add_argument("--lengths", nargs="+", type=number(int, 2), default=lengths, help="context lengths (default "
                   "%(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights (default %(default)s)")
    p.add_argument("--device", default=default_device(), type=device, help="cpu, cuda or cuda:N (default "
                   "%(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="evaluate.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_posgen_commands(sub)  # in the paper's order: fig1, fig2, table1, ablation, budget, perplexity, passkey, fig4
    _add_llama_commands(sub)
    p = sub.add_parser("speed", help="measure every performance target as a ratio to a same-run baseline")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=SPEED_BENCHES, help="benchmarks to run")
    p.add_argument("--device", default=torch.device("cpu"), type=device, help="where train_mfu trains (default cpu)")
    p.set_defaults(func=cmd_speed)
    return parser


def _add_posgen_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fig1", help="Figure 1: rotation angles of RoPE vs. Resonance RoPE (L=64, L'=128)")
    p.add_argument("--out", default="runs/fig1.png", type=path_for("file"), help="PNG path (default %(default)s)")
    p.set_defaults(func=cmd_fig1)
    p = sub.add_parser("fig2", help="Figure 2 as text: PosGen sequences and the positions one token depends on")
    p.add_argument("--task", choices=posgen.TASKS, default="recursive", help="the rule (default %(default)s)")
    p.add_argument("--show", type=number(int, 1), default=3, help="sequences to print (default %(default)s)")
    p.add_argument("--length", type=number(int, 2), default=16, help="tokens per sequence (default %(default)s)")
    p.add_argument("--position", type=number(int, 0), help="the l whose dependencies are marked (default: last)")
    p.add_argument("-j", "--j", type=number(int, 1), default=1, help="far tokens (default %(default)s)")
    p.add_argument("-k", "--k", type=number(int, 1), default=3, help="local tokens (default %(default)s)")
    p.add_argument("--modulus", type=number(int, 2), default=17, help="h = sum mod modulus (default %(default)s)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random prefixes (default %(default)s)")
    p.set_defaults(func=cmd_fig2)
    seeds, jobs = number(int, 0, 2**32 - 1), number(int, 1, 64)
    p = sub.add_parser("table1", help="train/test every (task, PE, seed) of a preset: Table 1 and Figure 3")
    p.add_argument("--seeds", type=seeds, nargs="+", action=Distinct, help="override the preset's seeds")
    p.add_argument("--tasks", nargs="+", choices=posgen.TASKS, action=Distinct, help="PosGen rules (default: the "
                   "preset's)")
    p.add_argument("--pes", nargs="+", choices=ft.PE_NAMES, action=Distinct, help="a subset (default all)")
    ft.add_posgen_args(p)
    p.add_argument("--out", type=path_for("file"), help="JSON path, the figures beside it (default "
                   "runs/table1_<preset>[_<harness>].json)")
    p.add_argument("--jobs", type=jobs, default=1, help="runs trained at once (processes; default %(default)s)")
    p.add_argument("--merge", nargs="+", action="extend", metavar="JSON", help="train nothing: combine these table1 "
                   "JSONs of the preset and harness (calls on other tasks, PEs or seeds) into --out, reported under "
                   "--select (repeating --merge adds files)")
    p.add_argument("--every-rule", action="store_true", help="also print Table 1 under every selection rule, from "
                   "the curves (default: only --select's)")
    p.set_defaults(func=cmd_table1)
    p = sub.add_parser("ablation", help="Table 1 under the full code harness and with each item switched off")
    ft.add_preset_args(p)
    p.add_argument("--seeds", type=seeds, nargs="+", default=[5549, 4955, 42], action=Distinct,
                   help="training seeds (default %(default)s)")
    p.add_argument("--tasks", nargs="+", choices=posgen.TASKS, default=["recursive", "cot"], action=Distinct,
                   help="PosGen rules (default %(default)s)")
    p.add_argument("--variants", nargs="+", choices=ABLATION, action=Distinct, help="a subset (default all)")
    p.add_argument("--jobs", type=jobs, default=1, help="runs trained at once (processes; default %(default)s)")
    p.add_argument("--out", type=path_for("file"), help="JSON path (default runs/table1_ablation[_<preset>].json)")
    p.set_defaults(func=cmd_ablation)
    p = sub.add_parser("budget", help="Table 1's paired differences against training epochs (the ablation JSONs)")
    p.add_argument("--inputs", nargs="+", type=path_for("file"), action=Distinct,
                   help="ablation results files of one model (default: results/table1_ablation*.json)")
    p.add_argument("--out", default="runs/table1_budget.png", type=path_for("file"),
                   help="figure path; the table's JSON goes beside it (default %(default)s)")
    p.set_defaults(func=cmd_budget)


def _add_llama_commands(sub: argparse._SubParsersAction) -> None:
    count, out = number(int, 1), path_for("file")
    p = sub.add_parser("perplexity", help="LLaMA perplexity vs context length for several PEs (no fine-tuning)")
    _add_llama_args(p, LLAMA_DEFAULT_PES, [2048, 4096, 8192, 16384])
    p.add_argument("--text", nargs="+", metavar="FILE", help=".txt or .jsonl (a 'text' field) documents, e.g. "
                   "PG19 or Proof-pile exports (default: the largest standard-library modules)")
    p.add_argument("--stdlib-modules", type=count, default=3, help="without --text: how many (default %(default)s)")
    p.add_argument("--samples", type=count, help="use at most this many documents")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--truncate", action="store_true", help="score each document's first N tokens (CPU default)")
    mode.add_argument("--stride", type=count, help="YaRN's sliding window (GPU default: stride 256)")
    p.add_argument("--out", default="runs/perplexity_smollm2.json", type=out, help="JSON path (default %(default)s)")
    p.add_argument("--png", default="runs/perplexity_smollm2.png", type=out, help="figure path, '' for none "
                   "(default %(default)s)")
    p.set_defaults(func=cmd_perplexity)
    p = sub.add_parser("passkey", help="YaRN-style passkey retrieval: accuracy per length and needle depth")
    _add_llama_args(p, PASSKEY_DEFAULT_PES, [2048, 4096, 8192, 16384])
    p.add_argument("--depths", nargs="+", type=number(float, 0, 1), default=[0.1, 0.5, 0.9],
                   help="needle depths in [0, 1] (default %(default)s)")
    p.add_argument("--trials", type=count, default=2, help="trials per (length, depth) (default %(default)s)")
    p.add_argument("--new-tokens", type=count, default=10, help="greedy tokens (default %(default)s, as YaRN)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the keys (default %(default)s)")
    p.add_argument("--out", default="runs/passkey_smollm2.json", type=out, help="JSON path (default %(default)s)")
    p.set_defaults(func=cmd_passkey)
    _add_fig4_command(sub)


def _add_fig4_command(sub: argparse._SubParsersAction) -> None:
    count, out = number(int, 1), path_for("file")
    p = sub.add_parser("fig4", help="Fig. 4 after fine-tuning: fine-tune each PE on the same data, then perplexity "
                                     "before/after with bootstrap intervals (resumable)")
    p.add_argument("--model", default="smollm2", help="HF directory, .gguf file or 'smollm2' (default %(default)s)")
    p.add_argument("--pes", nargs="+", type=pe_spelling, default=["yarn:4", "res_yarn:4"],
                   help="the PEs to fine-tune (default %(default)s: s = 4, SmolLM2's 8K → 32K)")
    p.add_argument("--tokens", type=count, default=20_000_000, help="fine-tuning tokens per PE (default %(default)s)")
    p.add_argument("--seq-len", type=number(int, 2), default=8192, help="packed training length (default "
                   "%(default)s)")
    p.add_argument("--batch-size", type=count, default=8, help="sequences per step (default %(default)s)")
    p.add_argument("--micro-batch", type=count, default=1, help="sequences per forward; the rest of a step is "
                   "gradient accumulation (default %(default)s)")
    p.add_argument("--lengths", nargs="+", type=number(int, 2), default=[8192, 16384, 32768],
                   help="perplexity lengths (default %(default)s)")
    p.add_argument("--text", help=".txt or .jsonl (a 'text' field) documents to fine-tune on and hold out from "
                   "(default: every module of Python's standard library)")
    p.add_argument("--heldout-docs", type=number(int, 2), default=20, help="held-out documents, each at least "
                   "max(--lengths) tokens (default %(default)s)")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0, help="data order and init seed (default "
                   "%(default)s)")
    p.add_argument("--runs-dir", default="runs", type=path_for("dir"), help="root of the fine-tuning runs (default "
                   "%(default)s)")
    p.add_argument("--device", default=default_device(), type=device, help="cpu, cuda or cuda:N (default "
                   "%(default)s)")
    p.add_argument("--out", default="runs/finetune_fig4.json", type=out, help="JSON path (default %(default)s)")
    p.add_argument("--png", default="runs/finetune_fig4.png", type=out, help="figure path, '' for none (default "
                   "%(default)s)")
    p.set_defaults(func=cmd_fig4)


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
