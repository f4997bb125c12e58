"""Evaluation entry points for the Resonance RoPE reference.

    python evaluate.py speed            # every performance target, each as a ratio to a baseline in the same run
    python evaluate.py speed --only rope_table
    python evaluate.py table1 --preset quick   # PosGen Table 1 + Figure 3: 12 runs, ~14 min on 2 CPU cores
    python evaluate.py posgen --task cot --pe yarn --preset quick   # one run: ID / OOD / per-position accuracy
    python evaluate.py fig1                    # Figure 1: m·θ_6 of RoPE vs. Resonance RoPE
    python evaluate.py perplexity       # SmolLM2 perplexity vs context length, 7 PEs (Fig. 4, no fine-tuning)
    python evaluate.py passkey --lengths 2048 8192 16384 --trials 2

Every subcommand is a function ``cmd_<name>(args)``; user mistakes become one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import finetune
import model as model_lib
import posgen
import resonance


class _Parser(argparse.ArgumentParser):
    """argparse that reports a user mistake in one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------------------------------------
# speed: each benchmark returns rows {"name", "ours_s", "baseline", "baseline_s", "ratio", "target", "ok"}.
# Ratios, not absolute times, because the machine is shared and noisy; both sides run in the same process.


def _best_time(fn: Callable[[], object], repeat: int = 5, min_time: float = 0.0) -> float:
    """Best wall time of ``repeat`` calls (the minimum is the least noisy estimate of the true cost)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, min_time)


def _row(name: str, ours_s: float, baseline: str, baseline_s: float, target: str, ok: bool) -> dict:
    return {"name": name, "ours_s": ours_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": ours_s / baseline_s, "target": target, "ok": bool(ok)}


def _tile_table_baseline(inv_freq: torch.Tensor, length: int,
                         dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' way to build a Resonance table: per feature, the angles ``arange(λ̃)·θ̃`` of one period
    tiled to L' (features longer than L' get ``arange(L')·θ̃``), stacked, then cos and sin of the whole table.
    Their code does this in float32; with ``dtype=float64`` (then cast) it yields our table bit for bit."""
    theta = inv_freq.to(dtype)
    lam = torch.round(2 * math.pi / inv_freq)
    cols = []
    for j in range(theta.numel()):
        period = int(lam[j])
        if period <= length:
            one = torch.arange(period, dtype=dtype) * theta[j]
            cols.append(one.repeat(-(-length // period))[:length])
        else:
            cols.append(torch.arange(length, dtype=dtype) * theta[j])
    angles = torch.stack(cols, dim=1)
    return angles.cos().float(), angles.sin().float()


def bench_rope_table() -> list[dict]:
    """Full cos+sin table for d=128, L'=131072 on one thread; and apply_rope online cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        length = 131072
        theta = resonance.resonance(resonance.rope_inv_freq(128, 10000.0))
        pos = torch.arange(length)

        def outer():
            ang = torch.outer(torch.arange(length, dtype=torch.float32), theta.float())
            return torch.cos(ang), torch.sin(ang)

        ours = _best_time(lambda: resonance.rope_cos_sin(theta, pos))
        t_outer = _best_time(outer)
        t_tile = _best_time(lambda: _tile_table_baseline(theta, length))
        t_tile32 = _best_time(lambda: _tile_table_baseline(theta, length, torch.float32))
        cos, sin = resonance.rope_cos_sin(theta, pos)
        lam = torch.round(2 * math.pi / theta).long()
        periodic = all(
            torch.equal(cos[int(lam[j]):, j], cos[: length - int(lam[j]), j])
            and torch.equal(sin[int(lam[j]):, j], sin[: length - int(lam[j]), j])
            for j in range(theta.numel()) if lam[j] < length
        )
        same = all(torch.equal(a, b) for a, b in zip((cos, sin), _tile_table_baseline(theta, length), strict=True))
        rows = [
            _row("rope_table d=128 L'=131072", ours, "outer product fp32", t_outer, "info", True),
            _row("rope_table d=128 L'=131072", ours, "tile loop fp32 (authors)", t_tile32, "info", True),
            _row("rope_table d=128 L'=131072", ours, "tile loop, same table", t_tile,
                 "<= 0.5x, exactly periodic, identical", ours <= 0.5 * t_tile and periodic and same),
        ]

        # Online cost: the tables are precomputed, so applying Resonance tables costs what RoPE tables cost.
        # The two are timed alternately, so a change in the machine's load hits both sides alike.
        x = torch.randn(1, 32, 4096, 128)
        plain = resonance.rope_cos_sin(resonance.rope_inv_freq(128), torch.arange(4096))
        res = resonance.rope_cos_sin(theta, torch.arange(4096))
        t_plain = t_res = math.inf
        for _ in range(15):
            t_plain = min(t_plain, _best_time(lambda: resonance.apply_rope(x, *plain), repeat=1))
            t_res = min(t_res, _best_time(lambda: resonance.apply_rope(x, *res), repeat=1))
        rows.append(_row("apply_rope, Resonance tables", t_res, "RoPE tables", t_plain, "<= 1.02x",
                         t_res <= 1.02 * t_plain))
        return rows
    finally:
        torch.set_num_threads(threads)


def _posgen_loop_baseline(task: str, prefixes: list[list[int]], length: int, j: int, k: int,
                          modulus: int) -> list[list[int]]:
    """PosGen the way the authors' generator runs: one Python list per sequence, one token at a time."""
    out = []
    for row in prefixes:
        x = list(row)
        for l in range(len(row), length):
            far = 0 if task == "cot" else (l - (j + k)) // 2
            window = x[l - (j + k):l] if task == "recursive" else x[far:far + j] + x[l - k:l]
            x.append(sum(window) % modulus)
        out.append(x)
    return out


def bench_posgen() -> list[dict]:
    """Generating the paper's 12,000 sequences × 256 tokens (j=1, k=3, mod 17), per task."""
    j, k, modulus, n, length = 1, 3, 17, 12000, 256
    rows = []
    for task in posgen.TASKS:
        prefix = posgen.make_splits(task, n_train=n, n_val=0, n_test=0, train_len=j + k + 1,
                                    test_len=j + k + 1, seed=0)["train"][:, :j + k]
        ours = _best_time(lambda t=task, p=prefix: posgen.generate(t, p, length, j, k, modulus))
        t0 = time.perf_counter()
        loop = _posgen_loop_baseline(task, prefix.tolist(), length, j, k, modulus)
        t_loop = time.perf_counter() - t0  # seconds long: one run is plenty
        same = posgen.generate(task, prefix, length, j, k, modulus).tolist() == loop
        rows.append(_row(f"posgen {task} 12000x256", ours, "per-token Python loop", t_loop,
                         "<= 0.1 s, >= 50x, same tokens", ours <= 0.1 and 50 * ours <= t_loop and same))
    return rows


def bench_train_mfu() -> list[dict]:
    """Training throughput of the paper-size PosGen model as model-FLOPs utilisation (MFU).

    The model of App. C.1 (2 layers, d_model 512, 8 heads × 64, d_ff 2048, dropout 0.1), fp32, one AdamW step
    on a batch of B = 128 sequences of T = 64 positions. Model FLOPs per step (PaLM's convention, App. B):
        6·N·B·T  +  12·n_layer·d_model·T·B·T,
    N = parameters in matmuls (embedding lookup and norms excluded, LM head included), the second term the
    attention score and value matmuls forward and backward (counted as full, not causal). MFU = those FLOPs per
    second over the fp32 matmul rate measured here, same threads (2048³, best of 5). Target: MFU ≥ 50%.
    """
    torch.manual_seed(0)
    B, T = 128, 64
    cfg = model_lib.TinyConfig()
    net = model_lib.TinyTransformer(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-2)
    seqs = torch.randint(0, cfg.vocab_size - 1, (B, T))
    x, y = finetune.lm_batch(seqs, cfg.vocab_size - 1, 4)

    def step() -> None:
        _, loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, optimizer state
    t_step = _best_time(step, repeat=4)
    n_mm = sum(p.numel() for name, p in net.named_parameters() if p.dim() == 2 and not name.startswith("tok_emb"))
    flops = 6 * n_mm * B * T + 12 * cfg.n_layer * cfg.d_model * T * B * T
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_mm = _best_time(lambda: a @ b)
    rate = 2 * 2048**3 / t_mm
    mfu = flops / t_step / rate
    return [_row(f"train_mfu paper model MFU {100 * mfu:.0f}%", t_step, "step at fp32 matmul rate", flops / rate,
                 f"MFU >= 50% ({rate / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} thr)", mfu >= 0.5)]


SPEED_BENCHES: dict[str, Callable[[], list[dict]]] = {
    "rope_table": bench_rope_table,
    "posgen": bench_posgen,
    "train_mfu": bench_train_mfu,
}


def cmd_speed(args: argparse.Namespace) -> int:
    names = args.only or list(SPEED_BENCHES)
    unknown = [n for n in names if n not in SPEED_BENCHES]
    if unknown:
        raise ValueError(f"--only must be among {sorted(SPEED_BENCHES)}, got {unknown}")
    print(f"{'benchmark':<40} {'ours':>10} {'baseline':<28} {'base':>10} {'ratio':>8}  target / ok")
    all_ok = True
    for name in names:
        for r in SPEED_BENCHES[name]():
            all_ok &= r["ok"]
            print(f"{r['name']:<40} {r['ours_s']:>9.4f}s {r['baseline']:<28} {r['baseline_s']:>9.4f}s "
                  f"{r['ratio']:>7.3f}x  {r['target']} {'ok' if r['ok'] else 'MISSED'}", flush=True)
    return 0 if all_ok else 1


# ----------------------------------------------------------------------------------------------------------
# PosGen (Sec. 6.1): evaluate a checkpoint, Table 1 with Figure 3, Figure 1.

TABLE1_TASKS = {"recursive": "Recursive", "cot": "CoT", "semirecursive": "Semi-Rec."}
TABLE1_PES = {"rope": "RoPE", "resonance_rope": "Res. RoPE", "yarn": "YaRN", "resonance_yarn": "Res. YaRN"}
# The paper's Table 1: OOD accuracy (%), (mean, variance) over five seeds.
PAPER_TABLE1 = {
    "recursive": {"rope": (65.29, 0.43), "resonance_rope": (62.64, 0.15), "yarn": (95.93, 0.04),
                  "resonance_yarn": (98.30, 0.00)},
    "cot": {"rope": (69.56, 0.33), "resonance_rope": (75.25, 0.10), "yarn": (98.71, 0.00),
            "resonance_yarn": (99.58, 0.00)},
    "semirecursive": {"rope": (17.96, 0.03), "resonance_rope": (29.78, 0.07), "yarn": (33.70, 0.04),
                      "resonance_yarn": (48.46, 0.03)},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def cmd_posgen(args: argparse.Namespace) -> int:
    """Test one trained run: ID / OOD / per-position teacher-forced accuracy on its test split."""
    if args.checkpoint:
        path = Path(args.checkpoint)
    else:
        if args.task is None or args.pe is None:
            raise ValueError("give --checkpoint, or --task and --pe (with --preset, --protocol, --seed)")
        preset = finetune.check_run_args(args.task, args.pe, args.preset, args.protocol)
        path = finetune.run_dir(args.runs_dir, preset, args.protocol, args.task,
                                finetune.training_run_pe(args.pe, args.protocol), args.seed)
    net, state = finetune.load_posgen_checkpoint(path, args.pe)
    meta = state["meta"]
    preset = finetune.Preset(**{**meta["preset"], "seeds": tuple(meta["preset"]["seeds"])})
    if state["epoch"] < preset.epochs:
        print(f"note: the run is unfinished (epoch {state['epoch']}/{preset.epochs})", file=sys.stderr)
    r = finetune.evaluate_posgen(net, finetune.posgen_data(meta)["test"], preset)
    pe = net.config.pe
    print(f"{meta['task']} {args.pe or meta['pe']} seed {meta['seed']} ({preset.name} preset, {meta['protocol']} "
          f"protocol, trained as {meta['pe']}, "
          f"epoch {state['epoch']}); evaluated with {pe.method} s={pe.factor:.4g} resonance={pe.resonance}")
    print(f"test loss {r['loss']:.4f}   ID acc (positions {preset.j + preset.k}-{preset.train_len - 1}) "
          f"{100 * r['id_acc']:.2f}%   OOD acc (positions {preset.train_len}-{preset.test_len - 1}) "
          f"{100 * r['ood_acc']:.2f}%")
    print("accuracy (%) per position:")
    per = r["per_position"]
    for start in range(0, len(per), 16):
        cells = " ".join("   -" if a is None else f"{100 * a:4.0f}" for a in per[start:start + 16])
        print(f"{start:>4}-{min(start + 15, len(per) - 1):<4} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "epoch": state["epoch"], **r}, indent=1))
    return 0


def _add_posgen_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("posgen", help="test one trained PosGen run: ID, OOD and per-position accuracy")
    p.add_argument("--checkpoint", help="a run directory or its ckpt.pt (else give --task and --pe)")
    p.add_argument("--task", help=f"one of {posgen.TASKS}")
    p.add_argument("--pe", help=f"one of {model_lib.PE_NAMES}; with --checkpoint, the row whose evaluation table "
                   "to use (default: the run's own)")
    p.add_argument("--seed", type=int, default=5549)
    p.add_argument("--preset", default="quick", help=f"one of {tuple(finetune.PRESETS)} (default quick)")
    p.add_argument("--protocol", default=finetune.DEFAULT_PROTOCOL,
                   help=f"one of {model_lib.PROTOCOLS} (default {finetune.DEFAULT_PROTOCOL})")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_posgen)


def table1_summary(runs: list[dict]) -> dict:
    """Per (task, PE): OOD and ID accuracy in %, mean and population variance over seeds, and whether the
    cell is comparable (mean ID accuracy ≥ 95%: the model learned the rule, so its OOD number measures the PE).
    """
    table: dict = {}
    for r in runs:
        table.setdefault(r["task"], {}).setdefault(r["pe"], []).append(r)
    out: dict = {}
    for task, row in table.items():
        for pe, rs in row.items():
            ood = np.array([100 * r["ood_acc"] for r in rs])
            acc_id = np.array([100 * r["id_acc"] for r in rs])
            out.setdefault(task, {})[pe] = {
                "n": len(rs), "ood_mean": float(ood.mean()), "ood_var": float(ood.var()),
                "id_mean": float(acc_id.mean()), "id_var": float(acc_id.var()),
                "comparable": bool(acc_id.mean() >= 100 * finetune.LEARNED_ID_ACC)}
    return out


def format_table1(summary: dict, preset: str, protocol: str, n_seeds: int) -> str:
    """Table 1 as text: per task, our OOD accuracy (mean ± variance), the paper's, and our ID accuracy.

    A star marks the better OOD of each pair (PE vs. its Resonance version), ours where both cells are
    comparable, the paper's as its bold. "n/c": not comparable, the model did not learn the rule (ID < 95%).
    """
    tasks = [t for t in TABLE1_TASKS if t in summary]
    lines = [f"Table 1, preset {preset}, {protocol} protocol, {n_seeds} seed(s): OOD accuracy (%) at positions "
             f"L..L'-1, mean ± variance over seeds; the paper's beside ours; ID accuracy (%) beside that"]
    head1 = f"{'':<10}" + "".join(f" | {TABLE1_TASKS[t]:<30}" for t in tasks)
    head2 = f"{'Setting':<10}" + "".join(f" | {'OOD ours':<14} {'paper':<7} {'ID':>6}" for _ in tasks)
    lines += [head1, head2, "-" * len(head2)]
    pairs = {"rope": "resonance_rope", "resonance_rope": "rope", "yarn": "resonance_yarn",
             "resonance_yarn": "yarn"}
    for pe, name in TABLE1_PES.items():
        cells = []
        for t in tasks:
            c = summary[t].get(pe)
            paper_mean = PAPER_TABLE1[t][pe][0]
            paper_star = "*" if paper_mean >= PAPER_TABLE1[t][pairs[pe]][0] else " "
            paper = f"{paper_mean:5.2f}{paper_star}"
            if c is None:
                cells.append(f" | {'(not run)':<14} {paper:<7} {'':>6}")
                continue
            other = summary[t].get(pairs[pe])
            star = " "
            if c["comparable"] and other is not None and other["comparable"] and c["ood_mean"] >= other["ood_mean"]:
                star = "*"
            var = f"{c['ood_var']:.2f}" if c["n"] > 1 else "n/a"
            ours = f"{c['ood_mean']:6.2f}±{var}{star}" if c["comparable"] else "n/c"
            cells.append(f" | {ours:<14} {paper:<7} {c['id_mean']:6.2f}")
        lines.append(f"{name:<10}" + "".join(cells))
    missing = [TABLE1_TASKS[t] for t in tasks if not all(c["comparable"] for c in summary[t].values())]
    if missing:
        lines.append(f"n/c = not comparable: ID accuracy < {100 * finetune.LEARNED_ID_ACC:.0f}%, the model did not "
                     f"learn the rule ({', '.join(missing)}); no ordering is claimed from those cells.")
    lines.append("* = better of the pair (PE vs. its Resonance version); paper: its bold.")
    return "\n".join(lines)


def plot_fig3(runs: list[dict], path: Path, title: str) -> None:
    """Figure 3: validation loss vs. epoch, the four PEs, one panel per subtask (mean over the seeds)."""
    plt = _pyplot()
    tasks = [t for t in TABLE1_TASKS if any(r["task"] == t for r in runs)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    summary = table1_summary(runs)
    for ax, task in zip(axes[0], tasks, strict=True):
        losses = []
        for color, (pe, name) in enumerate(TABLE1_PES.items()):
            rs = [r for r in runs if r["task"] == task and r["pe"] == pe]
            if not rs:
                continue
            # Every seed of a preset validates on the same epochs: average them epoch by epoch.
            val = [[(h["epoch"], h["val_loss"]) for h in r["history"] if "val_loss" in h] for r in rs]
            curve = list(zip([e for e, _ in val[0]], np.mean([[v for _, v in c] for c in val], axis=0).tolist(),
                             strict=True))
            losses += [v for _, v in curve]
            ax.plot(*zip(*curve, strict=True), marker="o", ms=3, label=name, color=f"C{color}",  # fixed per PE
                    linestyle="--" if pe.startswith("resonance") else "-")
        learned = all(c["comparable"] for c in summary[task].values())
        ax.set_title(TABLE1_TASKS[task] + ("" if learned else " (rule not learned: ID < 95%)"), fontsize=10)
        ax.set_xlabel("epoch")
        if losses and max(losses) > 10 * min(losses):  # log where losses span a decade; flat ones read better linear
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (L' = 256)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_table1(args: argparse.Namespace) -> int:
    """Table 1 and Figure 3: every (task × PE × seed) of a preset; finished runs are reused."""
    preset = finetune.check_run_args("recursive", "rope", args.preset, args.protocol)
    seeds = args.seeds or list(preset.seeds)
    out = Path(args.out or f"results/table1_{preset.name}.json")
    tasks, pes = args.tasks or list(TABLE1_TASKS), args.pes or list(TABLE1_PES)
    for task in tasks:
        finetune.check_run_args(task, "rope", preset, args.protocol)
    for pe in pes:
        finetune.check_run_args("recursive", pe, preset, args.protocol)
    combos = [(t, pe, s) for t in TABLE1_TASKS if t in tasks for pe in TABLE1_PES if pe in pes for s in seeds]
    t0 = time.perf_counter()
    runs = []
    for i, (task, pe, seed) in enumerate(combos, 1):
        print(f"[{i}/{len(combos)}] {task} {pe} seed {seed}  (elapsed {time.perf_counter() - t0:.0f}s)",
              file=sys.stderr, flush=True)
        r = finetune.run_posgen(task, pe, seed, preset, args.protocol, args.runs_dir, args.device)
        runs.append({"task": task, "pe": pe, "seed": seed, "id_acc": r["id_acc"], "ood_acc": r["ood_acc"],
                     "wall_s": r["wall_s"], "trained_as": r["trained_as"], "train_s": r["train_s"],
                     "test_s": r["test_s"], "learned": r["id_acc"] >= finetune.LEARNED_ID_ACC,
                     "history": r["history"]})
    wall = time.perf_counter() - t0
    summary = table1_summary(runs)
    print(format_table1(summary, preset.name, args.protocol, len(seeds)))
    runs_wall = sum(r["wall_s"] for r in runs)
    n_trained = sum(r["trained_as"] == r["pe"] for r in runs)
    print(f"wall time: {wall:.0f} s this call; {runs_wall:.0f} s summed over the {len(runs)} rows "
          f"({n_trained} training runs + {len(runs)} tests, timed when first run); {torch.get_num_threads()} threads")
    fig_path = out.with_name(out.stem + "_fig3.png")
    plot_fig3(runs, fig_path, f"Validation loss, preset {preset.name}, {args.protocol} protocol, "
                              f"mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "preset": preset.name, "protocol": args.protocol, "seeds": seeds, "wall_s": wall, "runs_wall_s": runs_wall,
        "threads": torch.get_num_threads(), "preset_config": dataclasses.asdict(preset), "table": summary,
        "paper_table1": {t: {pe: {"ood_mean": m, "ood_var": v} for pe, (m, v) in row.items()}
                         for t, row in PAPER_TABLE1.items()},
        "runs": [{k: v for k, v in r.items() if k != "history"}
                 | {"val_loss": [[h["epoch"], h["val_loss"]] for h in r["history"] if "val_loss" in h]}
                 for r in runs],
    }, indent=1))
    print(f"wrote {out} and {fig_path}")
    return 0


def _add_table1_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table1", help="train/test every (task, PE, seed) of a preset: Table 1 and Figure 3")
    p.add_argument("--preset", default="quick", help=f"one of {tuple(finetune.PRESETS)} (default quick)")
    p.add_argument("--protocol", default=finetune.DEFAULT_PROTOCOL,
                   help=f"one of {model_lib.PROTOCOLS} (default {finetune.DEFAULT_PROTOCOL})")
    p.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=f"a subset of {posgen.TASKS} (default all)")
    p.add_argument("--pes", nargs="+", metavar="PE", help=f"a subset of {model_lib.PE_NAMES} (default all)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", help="JSON path (default results/table1_<preset>.json; the PNG goes beside it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=cmd_table1)


def cmd_fig1(args: argparse.Namespace) -> int:
    """Figure 1: rotation angles m·θ_6 of RoPE and Resonance RoPE for m < L = 64 and L ≤ m < L' = 128."""
    dim, base, L, L2, j = 64, 10000.0, 64, 128, 6
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), subplot_kw={"projection": "polar"})
    for ax, (name, res) in zip(axes, (("RoPE", False), ("Resonance RoPE", True)), strict=True):
        theta, _ = resonance.scaled_inv_freq("rope", dim, base, L, resonance=res)
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
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def _add_fig1_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fig1", help="Figure 1: rotation angles of RoPE vs. Resonance RoPE (L=64, L'=128)")
    p.add_argument("--out", default="results/fig1.png")
    p.set_defaults(func=cmd_fig1)


# ----------------------------------------------------------------------------------------------------------
# LLaMA evaluations of Sec. 6.2 without fine-tuning: perplexity vs context length (Fig. 4) and passkey retrieval.

LLAMA_DEFAULT_PES = ("rope", "ntk:2", "dynamic_ntk", "yarn:2", "yarn:4", "res_yarn:2", "res_yarn:4")
PASSKEY_DEFAULT_PES = ("rope", "yarn:2", "res_yarn:2")


def parse_pe(spec: str, **common) -> model_lib.RopeSettings:
    """A PE from ``[res_]METHOD[:FACTOR]``: "rope" (or "none"), "linear:2", "ntk:2", "dynamic_ntk", "yarn:4",
    "res_yarn:4" (Resonance YaRN), … ``common``: the other ``RopeSettings`` fields (YaRN's alpha/beta/ramp, L)."""
    name, _, factor = spec.partition(":")
    res = name.startswith("res_")
    method = {"none": "rope"}.get(name.removeprefix("res_"), name.removeprefix("res_"))
    if method not in resonance.METHODS:
        raise ValueError(f"--pe {spec!r}: the method must be one of {('none', *resonance.METHODS)}, "
                         "optionally prefixed res_ and followed by :FACTOR")
    try:
        s = float(factor) if factor else 1.0
    except ValueError:
        raise ValueError(f"--pe {spec!r}: the factor must be a number, got {factor!r}") from None
    if method == "yarn":
        kw = common
    else:
        kw = {k: v for k, v in common.items() if k == "original_max_position_embeddings"}
    return model_lib.RopeSettings(method=method, factor=s, resonance=res, **kw)


def _pe_common(args: argparse.Namespace) -> dict:
    common = {"alpha": args.alpha, "beta": args.beta, "ramp": args.ramp}
    if args.original_length is not None:
        common["original_max_position_embeddings"] = args.original_length
    return common


def stdlib_documents(n: int) -> list[tuple[str, str]]:
    """The ``n`` largest modules of Python's standard library (by bytes, then name): (name, text).

    Long code documents that exist on every machine, in the spirit of Proof-pile / GitHub long-context sets.
    """
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"), key=lambda p: (-p.stat().st_size, p.name))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files[:n]]


def read_documents(paths: list[str]) -> list[tuple[str, str]]:
    """Documents from .txt files (one each) or .jsonl files (one per line, its ``text`` field): (name, text)."""
    docs = []
    for path in paths:
        p = Path(path)
        if p.suffix == ".jsonl":
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    record = json.loads(line)
                    if "text" not in record:
                        raise ValueError(f"{path} line {i + 1} has no 'text' field")
                    docs.append((f"{p.name}:{i + 1}", record["text"]))
        elif p.suffix == ".txt":
            docs.append((p.name, p.read_text(encoding="utf-8")))
        else:
            raise ValueError(f"--text takes .txt or .jsonl files, got {path}")
    return docs


class _Progress:
    """Progress lines on stderr with elapsed time and an ETA; work is counted in estimated cost units."""

    def __init__(self, what: str, total: float):
        self.what, self.total, self.done, self.t0 = what, total, 0.0, time.perf_counter()

    def step(self, cost: float, message: str) -> None:
        self.done += cost
        elapsed = time.perf_counter() - self.t0
        eta = elapsed * (self.total - self.done) / self.done if self.done else math.nan
        print(f"[{self.what}] {message} | elapsed {_hms(elapsed)} | ETA {_hms(eta)}", file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _forward_cost(T: int) -> float:
    # Projections grow with T, attention with T²; on SmolLM2 the two are about equal near T = 4K.
    return T * (1 + T / 4096)


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


def cmd_perplexity(args: argparse.Namespace) -> int:
    lengths = sorted(set(args.lengths))
    if lengths[0] < 2:
        raise ValueError(f"--lengths must be >= 2, got {lengths[0]}")
    pes = {spec: parse_pe(spec, **_pe_common(args)) for spec in args.pe}
    truncate = args.truncate or (args.stride is None and args.device == "cpu")
    stride = None if truncate else (args.stride or 256)
    tokenizer = model_lib.load_tokenizer(args.model)
    llama = model_lib.load_llama(args.model, dtype=_DTYPES[args.dtype]).to(args.device)
    docs = read_documents(args.text) if args.text else stdlib_documents(args.stdlib_modules)
    encoded = [(name, tokenizer.encode(text).ids) for name, text in docs]
    # Truncate mode needs every document to fill the longest window, as YaRN keeps documents ≥ that many tokens.
    keep = [(name, ids) for name, ids in encoded if not truncate or len(ids) >= lengths[-1]]
    keep = keep[:args.samples] if args.samples else keep
    if not keep:
        raise ValueError(f"no document has >= {lengths[-1]} tokens (the longest --lengths) for truncate mode")

    def plan(pe: model_lib.RopeSettings) -> list[int]:
        if not truncate:
            return lengths
        # A causal model's first N outputs do not depend on later tokens, so one forward over the longest window
        # scores every shorter truncation too; only Dynamic NTK's table depends on the length it is run at.
        return lengths if pe.method == "dynamic_ntk" else [lengths[-1]]

    def cost(n_tokens: int, length: int) -> float:
        if truncate:
            return _forward_cost(length)
        return _forward_cost(min(length, n_tokens)) * max(1, math.ceil((n_tokens - length) / stride) + 1)

    progress = _Progress("perplexity", sum(cost(len(ids), n) for pe in pes.values() for _, ids in keep
                                          for n in plan(pe)))
    results = {}
    for spec, pe in pes.items():
        llama.set_pe(pe)
        window_means = {n: [] for n in lengths}  # per length: the mean NLL of every window
        per_doc = {n: [] for n in lengths}
        for i, (name, ids_list) in enumerate(keep):
            ids = torch.tensor(ids_list, device=args.device)
            for run_len in plan(pe):
                t0 = time.perf_counter()
                with torch.no_grad():
                    if truncate:
                        nll = window_nlls(llama, ids, run_len, None)[0]
                        todo = [run_len] if pe.method == "dynamic_ntk" else lengths
                        windows = {n: [nll[: n - 1]] for n in todo}
                    else:
                        windows = {run_len: window_nlls(llama, ids, run_len, stride)}
                for n, ws in windows.items():
                    means = [float(w.double().mean()) for w in ws]
                    window_means[n] += means
                    per_doc[n].append(math.exp(sum(means) / len(means)))
                progress.step(cost(len(ids_list), run_len),
                              f"{spec} doc {i + 1}/{len(keep)} ({name}) at {run_len}: "
                              f"{time.perf_counter() - t0:.1f} s, ppl {per_doc[run_len][-1]:.3f}")
        ppl = {str(n): math.exp(sum(v) / len(v)) for n, v in window_means.items()}
        results[spec] = {"label": pe.label(), "settings": dataclasses.asdict(pe), "perplexity": ppl,
                         "per_document": {str(n): v for n, v in per_doc.items()}}
        print(f"{spec:<14} " + "  ".join(f"{n}: {p:.3f}" for n, p in ppl.items()), flush=True)

    report = {
        "settings": _settings(args),
        "model": args.model, "mode": "truncate" if truncate else f"sliding window, stride {stride}",
        "lengths": lengths, "trained_context": llama.train_len, "dtype": args.dtype, "device": args.device,
        "documents": [{"name": name, "tokens": len(ids)} for name, ids in keep],
        "python": sys.version.split()[0], "torch": torch.__version__,
        "seconds": round(time.perf_counter() - progress.t0, 1), "results": results,
    }
    _write_json(args.out, report)
    if args.png:
        plot_perplexity(report, args.png)
    return 0


def plot_perplexity(report: dict, path: str) -> None:
    """Fig. 4's layout: perplexity vs context length, one line per PE, the trained context marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["results"].values():
        xs = report["lengths"]
        ax.plot(xs, [r["perplexity"][str(n)] for n in xs],
                marker="o", linestyle="--" if r["settings"]["resonance"] else "-", label=r["label"])
    ax.axvline(report["trained_context"], color="grey", linestyle=":", linewidth=1)
    ax.text(report["trained_context"], ax.get_ylim()[1], " trained context", color="grey", va="top", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{report['model']}, no fine-tuning: {len(report['documents'])} documents, {report['mode']}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _write_json(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


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


def cmd_passkey(args: argparse.Namespace) -> int:
    import random
    import re

    pes = {spec: parse_pe(spec, **_pe_common(args)) for spec in args.pe}
    tokenizer = model_lib.load_tokenizer(args.model)
    llama = model_lib.load_llama(args.model, dtype=_DTYPES[args.dtype]).to(args.device)
    fill = {n: passkey_filler_chars(tokenizer, n) for n in args.lengths}
    progress = _Progress("passkey", len(pes) * len(args.depths) * args.trials * sum(map(_forward_cost, fill)))
    results = {}
    for spec, pe in pes.items():
        llama.set_pe(pe)
        rng = random.Random(args.seed)  # the same keys for every PE
        table = {}
        for n in args.lengths:
            for depth in args.depths:
                trials = []
                for _ in range(args.trials):
                    key = rng.randint(10000, 99999)
                    ids = tokenizer.encode(passkey_prompt(fill[n], depth, key)).ids
                    t0 = time.perf_counter()
                    out = llama.generate(torch.tensor([ids], device=args.device), args.new_tokens)
                    answer = tokenizer.decode(out[0, len(ids):].tolist())
                    found = re.search(r"\d+", answer)
                    trials.append({"key": key, "tokens": len(ids), "answer": answer,
                                   "correct": found is not None and int(found.group()) == key})
                    progress.step(_forward_cost(n), f"{spec} length {n} depth {depth:g}: {answer!r} "
                                  f"{'ok' if trials[-1]['correct'] else 'wrong'} ({time.perf_counter() - t0:.1f} s)")
                table[f"{n}@{depth:g}"] = {"length": n, "depth": depth, "trials": trials,
                                           "accuracy": sum(t["correct"] for t in trials) / len(trials)}
        results[spec] = {"label": pe.label(), "settings": dataclasses.asdict(pe), "by_length_depth": table,
                         "accuracy_by_length": {str(n): sum(v["accuracy"] for v in table.values()
                                                            if v["length"] == n) / len(args.depths)
                                                for n in args.lengths}}
    print(f"{'PE':<14}" + "".join(f"{n:>8}" for n in args.lengths) + "   (accuracy, mean over depths)")
    for spec, r in results.items():
        print(f"{spec:<14}" + "".join(f"{r['accuracy_by_length'][str(n)]:>8.2f}" for n in args.lengths))
    report = {"settings": _settings(args), "model": args.model,
              "lengths": args.lengths, "depths": args.depths, "trials": args.trials, "seed": args.seed,
              "new_tokens": args.new_tokens, "dtype": args.dtype, "device": args.device,
              "seconds": round(time.perf_counter() - progress.t0, 1), "results": results}
    _write_json(args.out, report)
    return 0


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _add_llama_args(p: argparse.ArgumentParser, pes: tuple[str, ...]) -> None:
    p.add_argument("--model", default="smollm2", help="HF checkpoint directory, .gguf file or 'smollm2' (default)")
    p.add_argument("--pe", nargs="+", default=list(pes), metavar="SPEC",
                   help="PEs as [res_]METHOD[:FACTOR], METHOD in none/rope, linear, ntk, dynamic_ntk, yarn; "
                        f"res_ = Resonance (default: {' '.join(pes)})")
    p.add_argument("--original-length", type=int, default=None,
                   help="L, the trained context the scalings start from (default: the model's, 8192 for SmolLM2)")
    p.add_argument("--alpha", type=float, default=1.0, help="YaRN α = HF beta_slow (default 1)")
    p.add_argument("--beta", type=float, default=32.0, help="YaRN β = HF beta_fast (default 32)")
    p.add_argument("--ramp", default="index", choices=resonance.RAMPS, help="YaRN ramp (default index, as HF)")
    p.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384], help="context lengths")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _add_perplexity_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perplexity", help="LLaMA perplexity vs context length for several PEs (Fig. 4, no FT)")
    _add_llama_args(p, LLAMA_DEFAULT_PES)
    p.add_argument("--text", nargs="+", metavar="FILE", help=".txt or .jsonl (a 'text' field) documents, e.g. "
                   "PG19, GovReport or Proof-pile exports (default: the largest standard-library modules)")
    p.add_argument("--stdlib-modules", type=int, default=3,
                   help="without --text: how many of the largest standard-library modules (default 3)")
    p.add_argument("--samples", type=int, default=None, help="use at most this many documents")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--truncate", action="store_true",
                      help="score the first N tokens of each document as one window (default on CPU)")
    mode.add_argument("--stride", type=int, default=None,
                      help="YaRN's sliding window: windows every STRIDE tokens, new tokens scored "
                           "(default on GPU, stride 256)")
    p.add_argument("--out", default="results/perplexity_smollm2.json")
    p.add_argument("--png", default="results/perplexity_smollm2.png", help="Figure-4-style plot ('' for none)")
    p.set_defaults(func=cmd_perplexity)


def _add_passkey_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("passkey", help="YaRN-style passkey retrieval: accuracy per length and needle depth")
    _add_llama_args(p, PASSKEY_DEFAULT_PES)
    p.add_argument("--depths", nargs="+", type=float, default=[0.1, 0.5, 0.9],
                   help="needle depths in [0, 1] (default 0.1 0.5 0.9)")
    p.add_argument("--trials", type=int, default=2, help="trials per (length, depth) (default 2)")
    p.add_argument("--new-tokens", type=int, default=10, help="greedy tokens generated (default 10, as YaRN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/passkey_smollm2.json")
    p.set_defaults(func=cmd_passkey)


def bench_llama_forward() -> list[dict]:
    """SmolLM2-135M forward (logits at every position), fp32 on CPU, at 2K and 8K tokens: ours against
    transformers' LlamaForCausalLM (sdpa) on the same GGUF weights and threads, interleaved, best of 2; then our
    peak memory for a 16K-token perplexity forward (``token_nll``) in a fresh process (``ru_maxrss``)."""
    import subprocess

    from transformers import AutoModelForCausalLM

    path = Path(model_lib.smollm2_path())
    ours = model_lib.load_llama(path)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    ids = model_lib.load_tokenizer(path).encode(stdlib_documents(1)[0][1]).ids
    rows = []
    for T in (2048, 8192):
        x = torch.tensor([ids[:T]])
        t_ours = t_hf = math.inf
        with torch.no_grad():
            for _ in range(2):  # alternate, so drift in the machine's load hits both sides
                t0 = time.perf_counter()
                got = ours(x)
                t_ours = min(t_ours, time.perf_counter() - t0)
                t0 = time.perf_counter()
                want = hf(x).logits
                t_hf = min(t_hf, time.perf_counter() - t0)
        # The logits drift apart with position (3e-3 at 8K) because transformers forms its RoPE angles in
        # float32; ours are exact (float64). The loss they give must still agree.
        nll_ours, nll_hf = (torch.nn.functional.cross_entropy(lg[0, :-1], x[0, 1:]).item() for lg in (got, want))
        same = abs(nll_ours - nll_hf) <= 1e-4 * nll_hf
        del got, want
        rows.append(_row(f"llama_forward SmolLM2 T={T}", t_ours, "transformers sdpa fp32", t_hf,
                         "tokens/s >= 1.0x, same loss", t_ours <= t_hf and same))
    del ours, hf
    # VmHWM, the peak RSS of this process image: ru_maxrss would also count the parent's pages at the fork.
    probe = ("import torch, model\n"
             "m = model.load_llama('smollm2')\n"
             "with torch.no_grad():\n"
             "    m.token_nll(torch.randint(0, m.config.vocab_size, (1, 16384)))\n"
             "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent, check=True,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_gib = int(out.stdout.split()[-1]) / 2**20  # VmHWM is in KiB
    print(f"llama 16K token_nll: peak RSS {peak_gib:.2f} GiB, {seconds:.0f} s with loading", flush=True)
    rows.append(_row("llama 16K token_nll peak RSS in GiB", peak_gib, "24 GiB (value in GiB)", 24.0,
                     "<= 0.5x", peak_gib <= 12))
    return rows


SPEED_BENCHES["llama_forward"] = bench_llama_forward


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evaluate.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("speed", help="measure every performance target as a ratio to a same-run baseline")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"benchmarks to run, of {list(SPEED_BENCHES)}")
    p.set_defaults(func=cmd_speed)
    _add_posgen_parser(sub)
    _add_table1_parser(sub)
    _add_fig1_parser(sub)
    _add_perplexity_parser(sub)
    _add_passkey_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate.py {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
