"""Training entry points for the Resonance RoPE reference.

    python finetune.py posgen --task recursive --pe resonance_yarn --preset quick --seed 5549
    python finetune.py posgen --task cot --pe yarn --preset paper --protocol paper --seed 42 --device cuda

``posgen`` trains the tiny Transformer of Sec. 6.1.1 / App. C.1 on one PosGen subtask with one position
encoding and one seed, under a preset (PRESETS) and a protocol (``model.posgen_pes``). A run lives in
``runs/posgen/<preset>-<protocol>/<task>/<pe>/seed<seed>/``: ``ckpt.pt`` (written atomically after every
epoch; a killed run resumes from it and ends bit-identical to an uninterrupted one on CPU), ``log.json`` (every
epoch's numbers) and, once trained and tested, ``result.json``.

Every subcommand is a function ``cmd_<name>(args)``; user mistakes become one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import torch.utils.checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

import model as model_lib
import posgen
import resonance


class _Parser(argparse.ArgumentParser):
    """argparse that reports a user mistake in one line (no usage dump) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------------------------------------
# PosGen (Sec. 6.1, App. C.1)


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model size, data and optimisation of one PosGen experiment. Defaults: App. C.1 and the authors' code."""

    name: str
    d_model: int = 512              # T5-small; head dimension is always d_model / n_head = 64
    n_head: int = 8
    d_ff: int = 2048
    n_layer: int = 2
    dropout: float = 0.1
    n_train: int = 10000
    n_val: int = 1000
    n_test: int = 1000
    train_len: int = 64             # L
    test_len: int = 256             # L' = s·L with s = 4
    epochs: int = 150
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 1e-2
    pct_start: float = 0.1          # one-cycle warm-up share
    val_every: int = 2              # epochs between validations (the last epoch always validates)
    seeds: tuple[int, ...] = (5549, 4955, 42, 3701, 49)
    j: int = 1
    k: int = 3
    modulus: int = 17
    compile: bool = True            # torch.compile on CUDA (never on CPU, where it does not pay off here)


PRESETS: dict[str, Preset] = {
    # App. C.1 exactly: 60 runs (3 tasks × 4 PEs × 5 seeds). GPU work.
    "paper": Preset("paper"),
    # A few CPU hours, 3 seeds: a narrower model (2 heads × 64) at a higher learning rate, the paper's data.
    "medium": Preset("medium", d_model=128, n_head=2, d_ff=512, epochs=16, lr=1e-3, seeds=(5549, 4955, 42)),
    # The README's main job: all 12 (task, PE) pairs, one seed, <= 20 min on 2 CPU cores. Same geometry (head
    # dim 64, b = 10000, L = 64, L' = 256, s = 4); narrower, half the training data, 6 epochs at a higher lr.
    "quick": Preset("quick", d_model=128, n_head=2, d_ff=512, n_train=5000, n_val=500, n_test=1000, epochs=6,
                    lr=1e-3, val_every=1, seeds=(5549,)),
}

DEFAULT_PROTOCOL = "code"  # see the README: which protocol reproduces Table 1 better
LEARNED_ID_ACC = 0.95  # below this ID accuracy a model has not learned the rule; its OOD number means nothing


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.1) -> float:
    """The learning rate of PyTorch's ``OneCycleLR`` (cosine annealing, div_factor 25, final_div_factor 1e4)
    at ``step`` of ``total_steps``: cosine from max_lr/25 up to max_lr over the first pct_start of the steps,
    then cosine down to max_lr/25e4. A pure function, so resuming needs only the step count."""
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, total_steps = {total_steps}), got {step}")
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    warm = max(pct_start * total_steps - 1, 1.0)
    if step <= warm:
        lo, hi, t = initial, max_lr, step / warm
    else:
        lo, hi, t = max_lr, final, (step - warm) / max(total_steps - 1 - warm, 1.0)
    return hi + (lo - hi) * (1 + math.cos(math.pi * t)) / 2


def check_run_args(task: str, pe: str, preset: str | Preset, protocol: str) -> Preset:
    """Validate names; return the Preset (a name is looked up in PRESETS)."""
    if task not in posgen.TASKS:
        raise ValueError(f"task must be one of {posgen.TASKS}, got {task!r}")
    if pe not in model_lib.PE_NAMES:
        raise ValueError(f"pe must be one of {model_lib.PE_NAMES}, got {pe!r}")
    if protocol not in model_lib.PROTOCOLS:
        raise ValueError(f"protocol must be one of {model_lib.PROTOCOLS}, got {protocol!r}")
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


def run_dir(root: str | Path, preset: Preset, protocol: str, task: str, pe: str, seed: int) -> Path:
    return Path(root) / "posgen" / f"{preset.name}-{protocol}" / task / pe / f"seed{seed}"


def training_run_pe(pe: str, protocol: str) -> str:
    """The row whose training run ``pe`` uses. Under ``code`` a YaRN row trains exactly as its RoPE row (same
    unscaled table, data, seed and RNG; validation draws no random numbers), so the two rows share one
    training run — bit-identical weights — and differ only in the table they are validated and tested with."""
    if protocol == "code" and pe.endswith("yarn"):
        return pe.removesuffix("yarn") + "rope"
    return pe


def _pes_sharing(pe: str, protocol: str) -> list[str]:
    """Every row trained by the training run of ``pe`` (its own row first)."""
    own = training_run_pe(pe, protocol)
    return [own] + [p for p in model_lib.PE_NAMES if p != own and training_run_pe(p, protocol) == own]


def tiny_config(preset: Preset, pe: model_lib.PEConfig) -> model_lib.TinyConfig:
    """The model of a preset: vocabulary = modulus + one start token, tables for positions 0 … L'−1."""
    return model_lib.TinyConfig(vocab_size=preset.modulus + 1, n_layer=preset.n_layer, d_model=preset.d_model,
                                n_head=preset.n_head, d_ff=preset.d_ff, dropout=preset.dropout,
                                max_len=preset.test_len, pe=pe)


def lm_batch(seqs: torch.Tensor, start_token: int, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing pairs for sequences x_0 … x_{T−1}: input [S, x_0, …, x_{T−2}] at positions 0 … T−1 and
    targets x_0 … x_{T−1}, with the first ``skip`` (= j+k, the given prefix) targets masked to -100."""
    start = torch.full((seqs.shape[0], 1), start_token, dtype=seqs.dtype)
    inputs = torch.cat((start, seqs[:, :-1]), dim=1)
    targets = seqs.clone()
    targets[:, :skip] = -100
    return inputs, targets


def accuracy_summary(per_position: torch.Tensor, j: int, k: int, train_len: int) -> dict:
    """ID accuracy = mean over positions j+k … L−1, OOD accuracy = mean over L … T−1 (None if T ≤ L); every
    position has the same number of sequences, so a mean of per-position means is the pooled mean."""
    T = per_position.numel()
    per = per_position.double()
    ood = per[train_len:].mean().item() if T > train_len else None
    return {"id_acc": per[j + k:train_len].mean().item(), "ood_acc": ood,
            "per_position": [None if i < j + k else per[i].item() for i in range(T)]}


def posgen_accuracy(logits: torch.Tensor, seqs: torch.Tensor, j: int = 1, k: int = 3,
                    train_len: int = 64) -> dict:
    """Teacher-forced argmax accuracy, as the authors' harness: the prediction at position i is
    argmax logits[:, i], compared with x_i. Positions < j+k (the given prefix) are not scored.

    Args:
        logits: (N, T, V) from inputs [S, x_0, …, x_{T−2}]. seqs: (N, T) tokens x_0 … x_{T−1}.
        j, k: PosGen's constants. train_len: L (ID positions j+k … L−1, OOD positions L … T−1).
    Returns:
        {"id_acc", "ood_acc", "per_position"} as fractions; per_position[i] is None for i < j+k.
    """
    if logits.shape[:2] != seqs.shape:
        raise ValueError(f"logits must have shape (N, T, V) matching seqs {tuple(seqs.shape)}, got "
                         f"{tuple(logits.shape)}")
    return accuracy_summary((logits.argmax(-1) == seqs).double().mean(0), j, k, train_len)


def _autocast(device: torch.device):
    # bf16 where it is fast (CUDA); fp32 on CPU, where determinism and the authors' fp32 matter more.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate_posgen(net: torch.nn.Module, seqs: np.ndarray | torch.Tensor, preset: Preset,
                    device: torch.device | str = "cpu", batch_size: int = 100) -> dict:
    """Teacher-forced loss and accuracy of ``net`` (with whatever table it holds) on (N, T) sequences.

    Returns:
        {"loss": mean cross-entropy over positions j+k … T−1, "id_acc", "ood_acc", "per_position"}.
    """
    device = torch.device(device)
    seqs = torch.as_tensor(seqs)
    was_training = net.training
    net.eval()
    correct = torch.zeros(seqs.shape[1], dtype=torch.float64)
    loss_sum, count = 0.0, 0
    for i in range(0, seqs.shape[0], batch_size):
        x, y = lm_batch(seqs[i:i + batch_size], preset.modulus, preset.j + preset.k)
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            logits, _ = net(x)
        logits = logits.float()
        mask = y != -100
        loss_sum += F.cross_entropy(logits[mask], y[mask], reduction="sum").item()
        count += int(mask.sum())
        correct += (logits.argmax(-1) == y).sum(0).double().cpu()
    net.train(was_training)
    out = accuracy_summary(correct / seqs.shape[0], preset.j, preset.k, preset.train_len)
    return {"loss": loss_sum / count, **out}


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    # Write beside the target, then rename: a kill leaves either the old file or the new one, never half.
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _write_json(path: Path, obj: object) -> None:
    def write(p: str) -> None:
        with open(p, "w") as f:
            json.dump(obj, f, indent=1)
    _atomic_write(path, write)


def _fmt_s(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _run_meta(task: str, pe: str, seed: int, preset: Preset, protocol: str) -> dict:
    return {"task": task, "pe": pe, "seed": seed, "protocol": protocol, "preset": dataclasses.asdict(preset)}


def build_posgen_model(meta: dict) -> tuple[model_lib.TinyTransformer, model_lib.PEConfig, model_lib.PEConfig]:
    """The model of a run (tables of the training PE), and its (training, evaluation) PE configs."""
    preset = Preset(**{**meta["preset"], "seeds": tuple(meta["preset"]["seeds"])})
    train_pe, eval_pe = model_lib.posgen_pes(meta["pe"], meta["protocol"], preset.train_len, preset.test_len)
    return model_lib.TinyTransformer(tiny_config(preset, train_pe)), train_pe, eval_pe


def posgen_data(meta: dict) -> dict[str, np.ndarray]:
    """The run's train/val/test splits; the run's seed also seeds the data (prefixes disjoint across splits)."""
    p = meta["preset"]
    return posgen.make_splits(meta["task"], p["n_train"], p["n_val"], p["n_test"], p["train_len"], p["test_len"],
                              p["j"], p["k"], p["modulus"], seed=meta["seed"])


def train_posgen(task: str, pe: str, seed: int, preset: str | Preset = "quick", protocol: str = DEFAULT_PROTOCOL,
                 runs_root: str | Path = "runs", device: str = "cpu", stop_after: int | None = None,
                 progress: bool = True) -> dict:
    """Train the run of one (task, PE, seed), resuming from its checkpoint if one exists.

    Loss: cross-entropy on every token after the given prefix (targets x_{j+k} … x_{L−1}). AdamW, one-cycle
    cosine schedule (``one_cycle_lr``), batches drawn by a seeded generator whose state is checkpointed with
    the model, optimizer, epoch and the dropout RNG. Validation on the L'-long split uses the *evaluation*
    table of the protocol (``model.posgen_pes``): val loss, ID and OOD accuracy — for every row that shares
    this training run (``training_run_pe``: under ``code`` the RoPE run also validates as the YaRN row).

    Args:
        stop_after: train at most this many epochs in this call (as if killed after them), then return.
    Returns:
        The checkpoint dict (meta, model state, history, epoch, elapsed_s, …); each history row holds
        {"epoch", "loss", "lr", "elapsed_s"} and, on validation epochs, "val": {pe: {"val_loss", "id_acc",
        "ood_acc"}}.
    """
    preset = check_run_args(task, pe, preset, protocol)
    dev = torch.device(device)
    sharing = _pes_sharing(pe, protocol)
    pe = sharing[0]
    meta = _run_meta(task, pe, seed, preset, protocol)
    out = run_dir(runs_root, preset, protocol, task, pe, seed)
    ckpt_path = out / "ckpt.pt"

    torch.manual_seed(seed)
    net, train_pe, _ = build_posgen_model(meta)
    val_pes = {p: model_lib.posgen_pes(p, protocol, preset.train_len, preset.test_len)[1] for p in sharing}
    net.to(dev)
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]  # RMSNorm gains: no weight decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": preset.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=preset.lr)
    gen = torch.Generator().manual_seed(seed)
    state = {"meta": meta, "epoch": 0, "elapsed_s": 0.0, "history": []}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["meta"] != meta:
            raise ValueError(f"run dir {out} holds a run with other settings ({state['meta']}); remove it or "
                             f"use another --runs-dir")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng_data"])
        torch.set_rng_state(state["rng_torch"])
        if dev.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"])
    if state["epoch"] >= preset.epochs:
        return state

    data = posgen_data(meta)
    inputs, targets = lm_batch(torch.from_numpy(data["train"]), preset.modulus, preset.j + preset.k)
    inputs, targets = inputs.to(dev), targets.to(dev)  # the whole training set is a few MB: move it once
    n = inputs.shape[0]
    steps_per_epoch = math.ceil(n / preset.batch_size)
    total_steps = steps_per_epoch * preset.epochs
    fwd = torch.compile(net) if preset.compile and dev.type == "cuda" else net
    out.mkdir(parents=True, exist_ok=True)
    t_session, t_last, first_epoch = time.perf_counter(), time.perf_counter(), state["epoch"]
    last_epoch = preset.epochs if stop_after is None else min(preset.epochs, first_epoch + stop_after)
    for epoch in range(first_epoch, last_epoch):
        net.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = torch.zeros((), device=dev)
        for i in range(steps_per_epoch):
            lr = one_cycle_lr(epoch * steps_per_epoch + i, total_steps, preset.lr, preset.pct_start)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * preset.batch_size:(i + 1) * preset.batch_size]
            x, y = inputs[idx], targets[idx]
            with _autocast(dev):
                _, loss = fwd(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        row = {"epoch": epoch + 1, "loss": loss_sum.item() / steps_per_epoch, "lr": lr}
        if (epoch + 1) % preset.val_every == 0 or epoch + 1 == preset.epochs:
            row["val"] = {}
            for name, table in val_pes.items():
                net.set_pe(table)
                val = evaluate_posgen(net, data["val"], preset, dev)
                row["val"][name] = {"val_loss": val["loss"], "id_acc": val["id_acc"], "ood_acc": val["ood_acc"]}
            net.set_pe(train_pe)
        now = time.perf_counter()
        row["elapsed_s"] = state["elapsed_s"] + now - t_last
        t_last = now
        state["history"].append(row)
        state.update(
            epoch=epoch + 1, elapsed_s=row["elapsed_s"], model=net.state_dict(), optimizer=opt.state_dict(),
            rng_data=gen.get_state(), rng_torch=torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state()} if dev.type == "cuda" else {}))
        _atomic_write(ckpt_path, lambda p, s=state: torch.save(s, p))
        _write_json(out / "log.json", {"meta": meta, "epochs": state["history"]})
        if progress:
            eta = (now - t_session) / (epoch + 1 - first_epoch) * (preset.epochs - epoch - 1)
            val_part = "".join(
                f"  {'' if name == pe else name + ': '}val_loss {v['val_loss']:.3f}  id_acc {_pct(v['id_acc'])}  "
                f"ood_acc {_pct(v['ood_acc'])}" for name, v in row.get("val", {}).items())
            print(f"{task}/{pe}/seed{seed} epoch {epoch + 1}/{preset.epochs}  loss {row['loss']:.3f}{val_part}  "
                  f"elapsed {_fmt_s(row['elapsed_s'])}  eta {_fmt_s(eta)}", file=sys.stderr, flush=True)
    return state


def load_posgen_checkpoint(path: str | Path, pe: str | None = None) -> tuple[model_lib.TinyTransformer, dict]:
    """A trained run's model (CPU, eval mode) holding the *evaluation* table of row ``pe`` (default: the run's
    own row; any row sharing the training run, ``training_run_pe``), and its checkpoint dict."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.exists():
        result = path.parent / "result.json"
        r = json.loads(result.read_text()) if result.exists() else {}
        # A row that shares another row's training run (code protocol, YaRN rows) has no checkpoint of its own.
        if r.get("trained_as", r.get("pe")) != r.get("pe"):
            raise FileNotFoundError(f"no checkpoint at {path}: the {r['pe']} row was trained as {r['trained_as']}; "
                                    f"give that run's directory and --pe {r['pe']}")
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = state["meta"]
    pe = meta["pe"] if pe is None else pe
    if pe not in _pes_sharing(meta["pe"], meta["protocol"]):
        raise ValueError(f"pe must be one of the rows trained by this run, "
                         f"{tuple(_pes_sharing(meta['pe'], meta['protocol']))}, got {pe!r}")
    net, _, _ = build_posgen_model(meta)
    net.load_state_dict(state["model"])
    p = meta["preset"]
    net.set_pe(model_lib.posgen_pes(pe, meta["protocol"], p["train_len"], p["test_len"])[1])
    return net.eval(), state


def run_posgen(task: str, pe: str, seed: int, preset: str | Preset = "quick", protocol: str = DEFAULT_PROTOCOL,
               runs_root: str | Path = "runs", device: str = "cpu", progress: bool = True) -> dict:
    """Train (or resume, or reuse) the run of one row, then test it with the row's evaluation table.

    A finished row's ``result.json`` is reused when its settings match. Returns {"task", "pe", "seed",
    "protocol", "preset", "id_acc", "ood_acc", "test_loss", "per_position", "trained_as", "train_s", "test_s",
    "wall_s", "history"}. A row that shares another row's training (``training_run_pe``) has "trained_as" set
    to that row and train_s = 0: the training time is counted once, on the row that owns it.
    """
    preset = check_run_args(task, pe, preset, protocol)
    meta = _run_meta(task, pe, seed, preset, protocol)
    result_path = run_dir(runs_root, preset, protocol, task, pe, seed) / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result["meta"] == json.loads(json.dumps(meta)) and "trained_as" in result:  # else: an older format
            return result
    trained_as = training_run_pe(pe, protocol)
    state = train_posgen(task, pe, seed, preset, protocol, runs_root, device, progress=progress)
    t0 = time.perf_counter()
    net, _ = load_posgen_checkpoint(run_dir(runs_root, preset, protocol, task, trained_as, seed), pe)
    test = evaluate_posgen(net.to(device), posgen_data(meta)["test"], preset, device)
    test_s = time.perf_counter() - t0
    train_s = state["elapsed_s"] if trained_as == pe else 0.0
    history = [{k: v for k, v in h.items() if k != "val"} | h.get("val", {}).get(pe, {}) for h in state["history"]]
    result = {"meta": meta, "task": task, "pe": pe, "seed": seed, "protocol": protocol, "preset": preset.name,
              "id_acc": test["id_acc"], "ood_acc": test["ood_acc"], "test_loss": test["loss"],
              "per_position": test["per_position"], "trained_as": trained_as, "train_s": train_s,
              "test_s": test_s, "wall_s": train_s + test_s, "history": history}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(result_path, result)
    return result


def cmd_posgen(args: argparse.Namespace) -> int:
    r = run_posgen(args.task, args.pe, args.seed, args.preset, args.protocol, args.runs_dir, args.device)
    print(f"{r['task']} {r['pe']} seed {r['seed']} ({r['preset']}, {r['protocol']} protocol): "
          f"ID acc {_pct(r['id_acc'])}  OOD acc {_pct(r['ood_acc'])}  wall {_fmt_s(r['wall_s'])}")
    return 0


def add_posgen_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("posgen", help="train one PosGen run (Sec. 6.1) and test it")
    p.add_argument("--task", required=True, help=f"one of {posgen.TASKS}")
    p.add_argument("--pe", required=True, help=f"one of {model_lib.PE_NAMES}")
    p.add_argument("--seed", type=int, default=5549)
    p.add_argument("--preset", default="quick", help=f"one of {tuple(PRESETS)} (default quick)")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL,
                   help=f"one of {model_lib.PROTOCOLS} (default {DEFAULT_PROTOCOL})")
    p.add_argument("--runs-dir", default="runs", help="root of the run directories (default runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=cmd_posgen)


# ===== LLaMA fine-tuning (Sec. 6.2.1, App. C.2) =====
#
#     python finetune.py llama --pe resonance_yarn --factor 2 --seq-len 2048 --train-tokens 65536 --out runs/llama/x
#     torchrun --nproc_per_node=4 finetune.py llama --pe yarn --factor 4 --out runs/llama/yarn-s4   # DDP
#     torchrun --nproc_per_node=8 finetune.py llama --fsdp ...                                       # FSDP, GPUs


@dataclasses.dataclass(frozen=True)
class LlamaRun:
    """Everything that decides the result of one fine-tuning run; a checkpoint of other settings is refused.

    Defaults follow App. C.2 (YaRN's recipe with the paper's ~100M-token budget): AdamW, lr 2e-5, weight decay
    0.01, linear warm-up over the first 5 % of the steps, then constant. The global batch of 64 sequences makes
    100M tokens at the target length L' = s·L = 16K about 100 steps, as the paper's 13B run (FT@16K, 100 steps).
    """

    model: str = "smollm2"          # HF directory, .gguf file, or a name of model.LLAMA_MODELS
    pe: str = "resonance_yarn"      # a resonance.METHODS name, optionally prefixed "resonance_" (Alg. 1)
    factor: float = 2.0             # s
    original_len: int | None = None  # L; None: the checkpoint's own (8192 for SmolLM2)
    alpha: float = 1.0              # YaRN's α, β (App. C.2)
    beta: float = 32.0
    seq_len: int | None = None      # training length; None: the target L' = s·L ("FT@target" of Table 2)
    train_tokens: int = 100_000_000
    batch_size: int = 64            # sequences per optimiser step, over all processes
    micro_batch: int = 1            # sequences per forward; batch_size / (micro_batch · processes) are accumulated
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.05            # share of the steps with a linear warm-up
    text: str | None = None         # .txt or .jsonl, as evaluate.py perplexity --text; None: Python's stdlib
    heldout_docs: int = 4           # documents kept out of training, written to heldout.jsonl for evaluation
    heldout_min_tokens: int | None = None  # a held-out document has at least this many tokens; None: L'
    seed: int = 0
    grad_checkpointing: bool = True


def llama_pe(pe: str, factor: float, original_len: int | None = None, alpha: float = 1.0,
             beta: float = 32.0) -> dict:
    """``load_llama`` keyword arguments for a PE name such as "yarn" or "resonance_yarn" and a factor s.

    Raises ValueError for an unknown name or a bad s, L, α, β (checked by ``model.RopeSettings``)."""
    method = pe.removeprefix("resonance_")
    if method not in resonance.METHODS:
        raise ValueError(f"pe must be one of {resonance.METHODS}, optionally prefixed 'resonance_', got {pe!r}")
    kw = {"method": method, "factor": float(factor), "resonance": pe.startswith("resonance_"),
          "original_max_position_embeddings": original_len}
    if method == "yarn":
        kw.update(alpha=float(alpha), beta=float(beta))
    model_lib.RopeSettings(**kw)  # validates now, before minutes of loading
    return kw


def pack_sequences(docs: list[list[int]], seq_len: int, sep: int | None) -> torch.Tensor:
    """Concatenate token lists (each followed by ``sep`` when given) and cut into (N, seq_len); the tail that
    does not fill a sequence is dropped."""
    stream = [t for doc in docs for t in ([*doc, sep] if sep is not None else doc)]
    n = len(stream) // seq_len
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)


# Separator between packed documents: the first of these the vocabulary holds (SmolLM2: <|endoftext|>).
_DOC_SEPARATORS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def llama_data(texts: list[str], tokenizer, seq_len: int, heldout_docs: int, heldout_min_tokens: int,
               seed: int) -> tuple[torch.Tensor, list[str]]:
    """Split documents into held-out and training text, tokenise once, pack the training part.

    The documents are shuffled with ``seed``; the first ``heldout_docs`` of at least ``heldout_min_tokens``
    tokens are held out (long enough to score at L'), all others are packed into (N, seq_len) training sequences.

    Returns:
        (training sequences (N, seq_len), held-out texts).
    """
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    ids = [enc.ids for enc in tokenizer.encode_batch([texts[i] for i in order], add_special_tokens=False)]
    held = [i for i, doc in enumerate(ids) if len(doc) >= heldout_min_tokens][:heldout_docs]
    if len(held) < heldout_docs:
        raise ValueError(f"heldout_docs = {heldout_docs} documents of >= {heldout_min_tokens} tokens are needed, "
                         f"the text has {len(held)}")
    sep = next((i for i in map(tokenizer.token_to_id, _DOC_SEPARATORS) if i is not None), None)
    train = pack_sequences([doc for i, doc in enumerate(ids) if i not in set(held)], seq_len, sep)
    if train.shape[0] == 0:
        raise ValueError(f"the training text holds fewer than seq_len = {seq_len} tokens")
    return train, [texts[order[i]] for i in held]


def batch_indices(step: int, batch_size: int, n_seqs: int, seed: int) -> torch.Tensor:
    """Indices of the ``batch_size`` training sequences of optimiser step ``step``: a pure function of the step,
    so the data position of a run is its step count. Epoch e visits the N sequences in the order of a
    permutation seeded by (seed, e); a batch may straddle two epochs."""
    first = step * batch_size
    out = []
    for e in range(first // n_seqs, (first + batch_size - 1) // n_seqs + 1):
        perm = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        lo, hi = max(first - e * n_seqs, 0), min(first + batch_size - e * n_seqs, n_seqs)
        out.append(perm[lo:hi])
    return torch.cat(out)


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up reaching 1 at step ``warmup_steps`` − 1, then constant. Unlike HF's
    schedule (which starts at 0), the first step already learns: a 5 % warm-up of a short run is one step."""
    return lambda step: min(1.0, (step + 1) / warmup_steps)


class CausalLMLoss(torch.nn.Module):
    """Mean next-token cross-entropy of a ``Llama`` over (B, T) sequences (B·(T−1) predictions).

    The vocabulary projection goes ``chunk`` positions at a time and, under gradient checkpointing, each chunk's
    logits are recomputed in the backward pass: at L' = 16K SmolLM2's full logits alone would be 3.2 GB. This
    module is what DDP / FSDP wrap, so the loss is part of the distributed forward.
    """

    def __init__(self, net: torch.nn.Module, chunk: int = 2048, checkpoint: bool = True):
        super().__init__()
        self.net, self.chunk, self.checkpoint = net, chunk, checkpoint

    def _nll_sum(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.net.lm_head(h).float()
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.net.hidden_states(input_ids)[:, :-1]
        target = input_ids[:, 1:]
        total = h.new_zeros((), dtype=torch.float32)
        for i in range(0, target.shape[1], self.chunk):
            args = (h[:, i:i + self.chunk], target[:, i:i + self.chunk])
            total = total + (torch.utils.checkpoint.checkpoint(self._nll_sum, *args, use_reentrant=False)
                             if self.checkpoint else self._nll_sum(*args))
        return total / target.numel()


def checkpoint_blocks(net: torch.nn.Module) -> None:
    """Gradient checkpointing: each decoder block's activations are recomputed in the backward pass.

    Done by wrapping the block's bound ``forward`` on the instance, so parameter names (and thus state dicts,
    DDP and FSDP) are unchanged."""
    for block in net.layers:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


def _dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as set by torchrun; (0, 0, 1) in a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def finetune_llama(run: LlamaRun, out: str | Path, device: str | None = None, fsdp: bool = False,
                   save_every: int = 20, stop_after: int | None = None, progress: bool = True) -> dict:
    """Fine-tune a LLaMA whose PE is replaced by ``run.pe`` with factor s (Sec. 6.2.1, App. C.2); resumable.

    Under torchrun (WORLD_SIZE > 1) the run is data-parallel: DDP, or with ``fsdp`` FSDP2 (``fully_shard`` of
    every block, then of the whole model; CUDA only). Rank r of R takes the r-th of R equal slices of each global
    batch, so a step's gradient is the same mean as in one process.

    ``out`` receives ``ckpt.pt`` (model, optimiser, scheduler, step = data position, RNG; written atomically
    every ``save_every`` steps and at the end), ``log.json`` (every step), ``heldout.jsonl`` (the held-out
    documents, ``{"text": …}`` per line, for ``evaluate.py perplexity --text``) and, once done, ``model/``: an HF
    directory (``model.save_llama``) that ``load_llama`` reads back with this PE. A run whose ``ckpt.pt`` exists
    resumes from it and, on CPU, ends bit-identical to an uninterrupted run.

    Args:
        device: "cpu", "cuda", …; None: cuda:LOCAL_RANK when CUDA is available, else CPU.
        stop_after: run at most this many steps in this call (as if killed after them), checkpoint, return.
    Returns:
        The log: {"run", "steps", "world_size", "history": [{"step", "loss", "lr", "tokens", "tok_s",
        "elapsed_s"}, …], "done"}.
    """
    pe = llama_pe(run.pe, run.factor, run.original_len, run.alpha, run.beta)
    for name in ("train_tokens", "batch_size", "micro_batch", "heldout_docs"):
        if getattr(run, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(run, name)}")
    if not 0 <= run.warmup <= 1:
        raise ValueError(f"warmup must be in [0, 1], got {run.warmup}")
    rank, local_rank, world = _dist_env()
    if run.batch_size % (run.micro_batch * world):
        raise ValueError(f"batch_size ({run.batch_size}) must be a multiple of micro_batch × processes "
                         f"({run.micro_batch} × {world})")
    if fsdp and not torch.cuda.is_available():
        raise ValueError("--fsdp shards the model over GPUs (torchrun on CUDA devices); none is available, "
                         "run without --fsdp for DDP or one process")
    dev = torch.device(device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    ckpt_path, model_dir = out / "ckpt.pt", out / "model"

    net = model_lib.load_llama(run.model, **pe)
    tokenizer = model_lib.load_tokenizer(run.model)
    target_len = math.ceil(run.factor * net.train_len) if pe["method"] != "rope" else net.train_len  # L'
    seq_len = run.seq_len or target_len
    if not 2 <= seq_len <= target_len:
        raise ValueError(f"seq_len must be in [2, s·L = {target_len}], got {seq_len}")
    steps = run.train_tokens // (run.batch_size * seq_len)
    if steps < 1:
        raise ValueError(f"train_tokens must be >= batch_size × seq_len = {run.batch_size * seq_len} (one step), "
                         f"got {run.train_tokens}")
    train, heldout = llama_data(_llama_texts(run.text), tokenizer, seq_len, run.heldout_docs,
                                run.heldout_min_tokens or target_len, run.seed)

    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.manual_seed(run.seed)
    net.to(dev).train()
    if run.grad_checkpointing:
        checkpoint_blocks(net)
    lm = CausalLMLoss(net, checkpoint=run.grad_checkpointing)
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in net.layers:
            fully_shard(block)
        fully_shard(lm)  # the root group: embeddings, final norm and (tied) head
    elif world > 1:
        lm = torch.nn.parallel.DistributedDataParallel(lm, device_ids=[dev.index] if dev.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": run.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=run.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(max(1, math.ceil(run.warmup * steps))))

    # Full (unsharded) state dicts keyed by parameter name: the same checkpoint serves 1 process, DDP and FSDP.
    sd_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    meta = dataclasses.asdict(run)
    log = {"run": meta, "steps": steps, "seq_len": seq_len, "target_len": target_len,
           "original_len": net.train_len, "world_size": world,
           "history": [], "done": False}
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["meta"] != meta:
            raise ValueError(f"{out} holds a run with other settings ({state['meta']}); remove it or use another "
                             f"--out")
        set_model_state_dict(net, state["model"], options=sd_opts)
        set_optimizer_state_dict(net, opt, state["optimizer"], options=sd_opts)
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if dev.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], dev)
        step, elapsed, log["history"] = state["step"], state["elapsed_s"], state["history"]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "heldout.jsonl",
                      lambda p: Path(p).write_text("".join(json.dumps({"text": t}) + "\n" for t in heldout)))

    per_rank = run.batch_size // world
    last = steps if stop_after is None else min(steps, step + stop_after)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    t_call, first = time.perf_counter(), step
    while step < last:
        t0 = time.perf_counter()
        idx = batch_indices(step, run.batch_size, train.shape[0], run.seed)[rank * per_rank:(rank + 1) * per_rank]
        micro = idx.split(run.micro_batch)
        loss_sum = torch.zeros((), device=dev)
        for k, mb in enumerate(micro):
            sync = k == len(micro) - 1  # reduce gradients once per step, not per micro-batch
            if fsdp:
                lm.set_requires_gradient_sync(sync)
            ctx = lm.no_sync() if world > 1 and not fsdp and not sync else contextlib.nullcontext()
            with ctx:
                with autocast:
                    loss = lm(train[mb].to(dev)) / len(micro)
                loss.backward()
            loss_sum += loss.detach()
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= world
        step += 1
        now = time.perf_counter()
        elapsed += now - t0
        tokens = run.batch_size * seq_len
        log["history"].append({"step": step, "loss": loss_sum.item(), "lr": lr, "tokens": step * tokens,
                               "tok_s": tokens / (now - t0), "elapsed_s": elapsed})
        if step % save_every == 0 or step == last:
            # collectives under FSDP: every rank gathers, rank 0 writes
            model_sd = get_model_state_dict(net, options=sd_opts)
            opt_sd = get_optimizer_state_dict(net, opt, options=sd_opts)
            if rank == 0:
                state = {"meta": meta, "step": step, "elapsed_s": elapsed, "history": log["history"],
                         "model": model_sd, "optimizer": opt_sd, "scheduler": sched.state_dict(),
                         "rng_torch": torch.get_rng_state(),
                         **({"rng_cuda": torch.cuda.get_rng_state(dev)} if dev.type == "cuda" else {})}
                _atomic_write(ckpt_path, lambda p, s=state: torch.save(s, p))
        if rank == 0:
            _write_json(out / "log.json", log)
            if progress:
                eta = (now - t_call) / (step - first) * (steps - step)
                print(f"step {step}/{steps}  loss {loss_sum.item():.3f}  tok/s {tokens / (now - t0):.0f}  "
                      f"elapsed {_fmt_s(elapsed)}  eta {_fmt_s(eta)}", file=sys.stderr, flush=True)
    if step == steps:
        full = get_model_state_dict(net, options=sd_opts)
        log["done"] = True
        if rank == 0:
            final = model_lib.Llama(net.config, net.pe)  # a plain CPU copy: no DDP/FSDP wrapping, no hooks
            final.load_state_dict(full)
            model_lib.save_llama(final, model_dir, tokenizer)
            _write_json(out / "log.json", log)
    if world > 1:
        torch.distributed.barrier()
    return log


def _llama_texts(text: str | None) -> list[str]:
    """The documents ``evaluate.py perplexity`` reads: None → every top-level module of Python's standard library
    (largest first); a .txt (one document) or .jsonl (a "text" field per line, as PG19) file."""
    import evaluate  # here, not at the top: evaluate.py imports this module

    if text is None:
        return [doc for _, doc in evaluate.stdlib_documents(10**9)]
    if not Path(text).is_file():
        raise FileNotFoundError(f"no such text file or directory: {text}")
    return [doc for _, doc in evaluate.read_documents([text])]


def compare_llama_runs(run_dirs: list[str | Path], lengths: list[int], out: str | Path,
                       png: str | Path | None = None) -> dict:
    """Perplexity on each run's held-out text before and after fine-tuning (Sec. 6.2.2), by ``evaluate.py
    perplexity`` in truncate mode (one window per document): the base model with the run's PE swapped in, then
    the fine-tuned directory. L is passed explicitly, since a fine-tuned directory's max_position_embeddings is
    L' = s·L. Writes ``perplexity_{before,after}.json`` into each run directory, the summary to ``out`` and,
    when given, a plot (solid: after, dashed: before) to ``png``.
    """
    import evaluate  # here, not at the top: evaluate.py imports this module

    runs = []
    for d in map(Path, run_dirs):
        if not (d / "log.json").is_file():
            raise FileNotFoundError(f"{d} is not a finetune.py llama run directory (no log.json)")
        log = json.loads((d / "log.json").read_text())
        if not log["done"]:
            raise ValueError(f"{d} has not finished training ({len(log['history'])} of {log['steps']} steps)")
        r = log["run"]
        spec = f"{'res_' if r['pe'].startswith('resonance_') else ''}{r['pe'].removeprefix('resonance_')}:" \
               f"{r['factor']:g}"
        common = ["--pe", spec, "--original-length", str(log["original_len"]), "--alpha", str(r["alpha"]),
                  "--beta", str(r["beta"]), "--text", str(d / "heldout.jsonl"), "--truncate", "--png", "",
                  "--lengths", *map(str, lengths)]
        row = {"dir": str(d), "pe": r["pe"], "factor": r["factor"], "seq_len": log["seq_len"],
               "target_len": log["target_len"], "original_len": log["original_len"], "steps": log["steps"],
               "train_tokens": log["steps"] * r["batch_size"] * log["seq_len"], "lr": r["lr"], "seed": r["seed"],
               "loss_first": log["history"][0]["loss"], "loss_last": log["history"][-1]["loss"],
               "train_s": log["history"][-1]["elapsed_s"]}
        for when, model in (("before", r["model"]), ("after", str(d / "model"))):
            path = d / f"perplexity_{when}.json"
            if evaluate.main(["perplexity", "--model", model, *common, "--out", str(path)]) != 0:
                raise ValueError(f"evaluate.py perplexity failed on {model}")
            report = json.loads(path.read_text())
            row["label"] = report["results"][spec]["label"]
            row[when] = {int(n): p for n, p in report["results"][spec]["perplexity"].items()}
            row["documents"] = report["documents"]
        runs.append(row)
        print(f"{row['label']:<22} " + "  ".join(f"{n}: {row['before'][n]:.3f} → {row['after'][n]:.3f}"
                                                 for n in sorted(row["after"])), flush=True)
    summary = {"lengths": sorted(lengths), "mode": "truncate", "runs": runs}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    _write_json(Path(out), summary)
    if png:
        plt = evaluate._pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, row in enumerate(runs):
            xs = sorted(row["after"])
            for when, style in (("before", "--"), ("after", "-")):
                ax.plot(xs, [row[when][n] for n in xs], style, marker="o", color=f"C{i}",
                        label=f"{row['label']}, {'no FT' if when == 'before' else 'FT@' + str(row['seq_len'])}")
        ax.axvline(runs[0]["original_len"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens); dotted: L")
        ax.set_ylabel("perplexity (held-out text)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
    return summary


def cmd_llama_compare(args: argparse.Namespace) -> int:
    compare_llama_runs(args.runs, args.lengths, args.out, args.png or None)
    return 0


def add_llama_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("llama-compare", help="perplexity of finished llama runs on their held-out text, before "
                                             "and after fine-tuning (Sec. 6.2.2)")
    p.add_argument("runs", nargs="+", help="run directories of finetune.py llama")
    p.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    p.add_argument("--out", default="results/finetune_smollm2.json")
    p.add_argument("--png", default="results/finetune_smollm2.png", help="plot path ('' for none)")
    p.set_defaults(func=cmd_llama_compare)


def cmd_llama(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(LlamaRun)}
    run = LlamaRun(**{k: v for k, v in vars(args).items() if k in fields})
    out = args.out or Path("runs") / "llama" / f"{run.pe}-s{run.factor:g}"
    log = finetune_llama(run, out, device=args.device, fsdp=args.fsdp, save_every=args.save_every)
    if int(os.environ.get("RANK", 0)) == 0:
        last = log["history"][-1] if log["history"] else {}
        print(f"{run.pe} s={run.factor:g}: {log['steps']} steps of {run.batch_size} × {log['seq_len']} tokens, "
              f"final loss {last.get('loss', float('nan')):.3f}, wall {_fmt_s(last.get('elapsed_s', 0.0))}; "
              f"model in {Path(out) / 'model'}, held-out text in {Path(out) / 'heldout.jsonl'}")
    return 0


def add_llama_parser(sub: argparse._SubParsersAction) -> None:
    d = LlamaRun()
    p = sub.add_parser("llama", help="fine-tune a LLaMA with a scaled PE (Sec. 6.2.1, App. C.2); resumable; "
                                     "data-parallel under torchrun")
    p.add_argument("--model", default=d.model, help="HF directory, .gguf file or 'smollm2' (default)")
    p.add_argument("--pe", default=d.pe, help=f"one of {resonance.METHODS}, optionally prefixed 'resonance_' "
                                              f"(default {d.pe})")
    p.add_argument("--factor", type=float, default=d.factor, help=f"s (default {d.factor:g})")
    p.add_argument("--original-len", type=int, default=None, help="L (default: the checkpoint's context length)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="YaRN's α (default 1)")
    p.add_argument("--beta", type=float, default=d.beta, help="YaRN's β (default 32)")
    p.add_argument("--seq-len", type=int, default=None, help="training length (default: the target s·L)")
    p.add_argument("--train-tokens", type=int, default=d.train_tokens,
                   help=f"token budget; steps = train_tokens // (batch_size · seq_len) (default {d.train_tokens})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences per optimiser step over all processes (default {d.batch_size})")
    p.add_argument("--micro-batch", type=int, default=d.micro_batch,
                   help="sequences per forward pass; the rest is gradient accumulation (default 1)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up share of the steps (default 0.05)")
    p.add_argument("--text", default=None,
                   help="training text: .txt or .jsonl (a 'text' field per line, as PG19) (default: Python's "
                        "standard library)")
    p.add_argument("--heldout-docs", type=int, default=d.heldout_docs,
                   help=f"documents held out of training for evaluation (default {d.heldout_docs})")
    p.add_argument("--heldout-min-tokens", type=int, default=None,
                   help="minimum length of a held-out document (default: the target s·L)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-grad-checkpointing", dest="grad_checkpointing", action="store_false")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 (torchrun on GPUs)")
    p.add_argument("--save-every", type=int, default=20, help="checkpoint every this many steps (default 20)")
    p.add_argument("--out", default=None, help="run directory (default runs/llama/<pe>-s<factor>)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    p.set_defaults(func=cmd_llama)


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finetune.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_posgen_parser(sub)
    add_llama_parser(sub)
    add_llama_compare_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"finetune.py {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
