"""Training for the Resonance RoPE reference, and what evaluate.py shares with it (PosGen evaluation, text
documents).

    python finetune.py posgen --task recursive --pe res_yarn --preset quick --seed 5549
    python finetune.py llama --pe res_yarn:2 --seq-len 2048 --train-tokens 65536 --out runs/llama/x
    torchrun --nproc_per_node=4 finetune.py llama --pe yarn:4 --out runs/llama/yarn-s4       # DDP
    torchrun --nproc_per_node=8 finetune.py llama --fsdp ...                                 # FSDP2, GPUs

``posgen`` trains the tiny Transformer of Sec. 6.1.1 / App. C.1 on one task for one Table 1 row and seed, in
``runs/posgen/<preset>-<harness>/<task>/<pe>/seed<seed>/`` (``ckpt.pt`` after every epoch, ``log.json``,
``result.json``). ``llama`` fine-tunes a LLaMA with a scaled PE (Sec. 6.2.1, App. C.2). Both resume from their
checkpoint and end bit-identical to an uninterrupted run on CPU. A user mistake is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.distributed.checkpoint import state_dict as dcp

import model as model_lib
import posgen
from model import atomic_write, read_json, write_json
from resonance import PE, Parser, boolean, default_device, device, number, path_for, pe_spelling, run_main

# ----------------------------------------------------------------------------------------------------------
# PosGen (Sec. 6.1, App. C.1): the preset and harness, data and model, scoring, optimiser, the training loop,
# epoch selection, one Table 1 cell.


PE_NAMES = ("rope", "res_rope", "yarn", "res_yarn")  # the rows of Table 1
PROTOCOLS = ("code", "paper")
PRECISIONS = ("tf32", "fp32", "bf16")
SELECT_RULES = ("best_val_id", "last", "min_val_loss", "best_val_id_x4", "best_val_ood")
KEPT_RULES = SELECT_RULES[:2]  # the rules whose epochs a run keeps the test accuracy per position of


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model width, data and optimisation of one PosGen experiment (the depth is the harness's). Defaults: App. C.1
    and the authors' code."""

    name: str
    d_model: int = 512              # T5-small; head dimension is always d_model / n_head = 64
    n_head: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    n_train: int = 10000
    n_val: int = 1000
    n_test: int = 1000
    train_len: int = 64             # L
    test_len: int = 256             # L' = s·L with s = 4
    epochs: int = 150
    batch_size: int = 128
    lr: float = 2e-4                # AdamW, one-cycle cosine schedule (PyTorch's OneCycleLR)
    weight_decay: float = 1e-2
    pct_start: float = 0.1          # one-cycle warm-up share
    val_every: int = 2              # epochs between validations (the last epoch always validates)
    seeds: tuple[int, ...] = (5549, 4955, 42, 3701, 49)
    j: int = 1
    k: int = 3
    modulus: int = 17
    precision: str = "tf32"         # on CUDA, one of PRECISIONS: "tf32" (fp32 weights, TF32 matmuls), "fp32" (the
                                    # authors' precision: 32, no TF32), "bf16" (autocast); on CPU always fp32
    tasks: tuple[str, ...] = posgen.TASKS  # what `evaluate.py table1` runs by default


PRESETS: dict[str, Preset] = {
    # App. C.1 exactly: 60 runs (3 tasks × 4 PEs × 5 seeds). GPU work.
    "paper": Preset("paper"),
    # The README's main job: the authors' harness (6 layers) scaled down until every cell learns the rule in
    # 15 minutes on 2 CPU cores (results/README, "The main job at 6 layers"). Same geometry (head dim 64,
    # b = 10000, L = 64, L' = 256, s = 4, j = 1, k = 3, mod 17) and training data; a quarter of the width (2 heads),
    # batch 32 at lr 1e-3 for 2 epochs, smaller val/test splits; Recursive and CoT.
    "quick": Preset("quick", d_model=128, n_head=2, d_ff=512, n_val=250, n_test=500, epochs=2, batch_size=32,
                    lr=1e-3, seeds=(5549,), tasks=("recursive", "cot")),
    # The CPU experiments of the 2-layer era (budget, ablation, levels): half the width (4 heads), 12 epochs, CoT.
    # With --epochs 4 --tasks recursive cot --n-layer 2 it is the former 2-layer `quick` (results/README).
    "cot": Preset("cot", d_model=256, n_head=4, d_ff=1024, n_val=250, n_test=500, epochs=12, batch_size=32,
                  lr=1e-3, seeds=(5549,), tasks=("cot",)),
}


def posgen_pes(pe: str, protocol: str = "code", train_len: int = 64, test_len: int = 256) -> tuple[PE, PE]:
    """The (training, evaluation) PEs of one Table 1 row under a protocol; "res_" applies Alg. 1 last.

    ``paper`` (App. C.1): YaRN rows train *and* test with YaRN at s = L'/L = 4, α = 1, β = 32, Sec. 3.3's ramp.
    ``code`` (the authors' released harness): every row trains with the unscaled table; YaRN rows swap YaRN in for
    evaluation as that code computes it: s = (L'+1)/(L+1) = 257/65, the correction range from length L'+1 = 257 (where
    YaRN means the *original* length), β_fast = 2, β_slow = 1, the index ramp. The +1 is their start token.
    """
    if pe not in PE_NAMES or protocol not in PROTOCOLS or not 0 < train_len < test_len:
        raise ValueError(f"pe must be one of {PE_NAMES}, protocol one of {PROTOCOLS} and 0 < train_len < test_len, "
                         f"got {pe!r}, {protocol!r}, {train_len}, {test_len}")
    res = pe.startswith("res_")
    plain = PE("rope", resonance=res, original_len=train_len)
    if pe.endswith("rope"):
        return plain, plain
    if protocol == "paper":
        return (PE("yarn", test_len / train_len, res, train_len, alpha=1.0, beta=32.0, ramp="paper"),) * 2
    return plain, PE("yarn", (test_len + 1) / (train_len + 1), res, test_len + 1, alpha=1.0, beta=2.0, ramp="index")


HARNESS_CHOICES = {"protocol": PROTOCOLS, "attention": ("t5", "sdpa"), "split": ("authors", "disjoint"),
                   "schedule": ("authors", "ours"), "select": SELECT_RULES}


@dataclasses.dataclass(frozen=True)
class Harness:
    """How a PosGen run trains and which epoch it reports: one field for each way the authors' released harness
    (``code``, the defaults) differs from App. C.1 as written (``paper``), so each can be switched on its own."""

    protocol: str = "code"          # the tables (posgen_pes): "code" trains unscaled, tests YaRN at 257/65
    n_layer: int = 6                # the depth: their command builds t5-small's 6 blocks (AutoConfig('t5-small'));
                                    # App. C.1's text says two
    freeze_ffn: bool = True         # model.TinyConfig: FFN and its norm stay at their initialisation
    tie_head: bool = True           # model.TinyConfig: head = embedding, on the final state × d_model^−½
    attention: str = "t5"           # model.TinyConfig: "t5" (no 1/√d, Mesh-TF init, final dropout) or "sdpa"
    split: str = "authors"          # posgen.make_splits: "authors" (cycled combinations, no seed) or "disjoint"
    schedule: str = "authors"       # "authors": decay on every weight, Adam β1 cycled 0.95 → 0.85 → 0.95 by the
                                    # one-cycle schedule; "ours": no decay on norm gains, β1 = 0.9
    select: str = "best_val_id"     # the reported epoch, one of SELECT_RULES (select_epoch); the authors': best val ID

    def __post_init__(self):
        for name, allowed in {**HARNESS_CHOICES, "freeze_ffn": (True, False), "tie_head": (True, False)}.items():
            if getattr(self, name) not in allowed or not isinstance(getattr(self, name), type(allowed[0])):
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.n_layer, int) and 1 <= self.n_layer <= 64):
            raise ValueError(f"n_layer must be an int in [1, 64], got {self.n_layer!r}")

    def training(self) -> dict:
        """The fields that decide the training run (not ``select``: both rules read the same run)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "select"}

    @property
    def name(self) -> str:
        """The protocol, then each training setting that differs from that protocol's harness: "code+n_layer=2"."""
        base = HARNESSES[self.protocol].training()
        return self.protocol + "".join(f"+{k}={v}" for k, v in self.training().items() if v != base[k])


HARNESSES = {"code": Harness(), "paper": Harness("paper", n_layer=2, freeze_ffn=False, tie_head=False,
                                                 attention="sdpa", split="disjoint", schedule="ours", select="last")}


LEARNED_ID_ACC = 0.95  # below this ID accuracy a model has not learned the rule; its OOD number means nothing


def check_run_args(task: str, pe: str, preset: str | Preset, harness: str | Harness) -> tuple[Preset, Harness]:
    """Validate names; return the Preset and Harness (a name is looked up in PRESETS, HARNESSES)."""
    if not (isinstance(harness, Harness) or harness in HARNESSES):
        raise ValueError(f"harness must be one of {tuple(HARNESSES)} or a Harness, got {harness!r}")
    harness = harness if isinstance(harness, Harness) else HARNESSES[harness]
    posgen_pes(pe, harness.protocol)
    if task not in posgen.TASKS or not (isinstance(preset, Preset) or preset in PRESETS):
        raise ValueError(f"task must be one of {posgen.TASKS} and preset one of {tuple(PRESETS)}, got {task!r}, "
                         f"{preset!r}")
    return preset if isinstance(preset, Preset) else PRESETS[preset], harness


def preset_of(config: dict) -> Preset:
    """The Preset a results file or checkpoint records (its fields; lists back to tuples)."""
    return Preset(**{f.name: tuple(config[f.name]) if f.name in ("seeds", "tasks") else config[f.name]
                     for f in dataclasses.fields(Preset) if f.name in config})


def run_meta(task: str, pe: str, seed: int, preset: Preset, harness: Harness) -> dict:
    """What identifies a training run; "format" 6: the harness settings (the depth among them), validation every
    ``val_every`` epochs, the test split scored at every validation (the curves) with its accuracy per position."""
    return {"task": task, "pe": pe, "seed": seed, "harness": harness.training(), "preset": dataclasses.asdict(preset),
            "format": 6}


def run_dir(root: str | Path, preset: Preset, harness: Harness, task: str, pe: str, seed: int) -> Path:
    return Path(root) / "posgen" / f"{preset.name}-{harness.name}" / task / pe / f"seed{seed}"


def training_run_pe(pe: str, protocol: str) -> str:
    """The row whose training run ``pe`` uses. Under ``code`` a YaRN row trains exactly as its RoPE row (same
    unscaled table, data, seed and RNG; validation draws no random numbers), so the two rows share one training
    run — bit-identical weights — and differ only in the table they are validated and tested with."""
    return pe.removesuffix("yarn") + "rope" if protocol == "code" and pe.endswith("yarn") else pe


def pes_sharing(pe: str, protocol: str) -> list[str]:
    """Every row trained by the training run of ``pe``, its own row first (PE_NAMES lists RoPE rows first)."""
    return [p for p in PE_NAMES if training_run_pe(p, protocol) == training_run_pe(pe, protocol)]


def posgen_data(meta: dict) -> dict[str, np.ndarray]:
    """The run's train/val/test splits (the disjoint split is seeded by the run's seed)."""
    p = meta["preset"]
    return posgen.make_splits(meta["task"], p["n_train"], p["n_val"], p["n_test"], p["train_len"], p["test_len"],
                              p["j"], p["k"], p["modulus"], seed=meta["seed"], split=meta["harness"]["split"])


def lm_batch(seqs: torch.Tensor, start_token: int, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing pairs for sequences x_0 … x_{T−1}: input [S, x_0, …, x_{T−2}] at positions 0 … T−1 and
    targets x_0 … x_{T−1}, with the first ``skip`` (= j+k, the given prefix) targets masked to -100."""
    inputs = torch.cat((torch.full((seqs.shape[0], 1), start_token, dtype=seqs.dtype), seqs[:, :-1]), dim=1)
    targets = seqs.clone()
    targets[:, :skip] = -100
    return inputs, targets


def posgen_model(meta: dict) -> tuple[model_lib.TinyTransformer, PE]:
    """The model of a run, holding its training table (vocabulary = modulus + a start token, positions
    0 … L'−1), and that training PE."""
    p, h = preset_of(meta["preset"]), meta["harness"]
    train_pe = posgen_pes(meta["pe"], h["protocol"], p.train_len, p.test_len)[0]
    cfg = model_lib.TinyConfig(vocab_size=p.modulus + 1, n_layer=h["n_layer"], d_model=p.d_model, n_head=p.n_head,
                               d_ff=p.d_ff, dropout=p.dropout, max_len=p.test_len, pe=train_pe,
                               freeze_ffn=h["freeze_ffn"], tie_head=h["tie_head"], attention=h["attention"])
    return model_lib.TinyTransformer(cfg), train_pe


def accuracy_summary(per_position: torch.Tensor, j: int, k: int, train_len: int) -> dict:
    """ID accuracy = mean over positions j+k … L−1, OOD accuracy = mean over L … T−1 (None if T ≤ L); every
    position has the same number of sequences, so a mean of per-position means is the pooled mean.

    Beside them, the first generated token x_{j+k} (x_4 at the paper's j = 1, k = 3) on its own ("x4_acc") and
    the ID accuracy without it, positions j+k+1 … L−1 ("id_acc_x4free"). With h = sum mod p, x_l = 2·x_{l−1} −
    x_{l−5} (Recursive) or 2·x_{l−1} − x_{l−4} (CoT) holds from l = j+k+1 on (``posgen.shortcut_position``), so a
    model can learn every ID label but x_4's from two tokens; ``posgen.shortcut_id_ceiling``: the ID that buys."""
    per, T = per_position.double(), per_position.numel()
    return {"id_acc": per[j + k:train_len].mean().item(), "ood_acc": per[train_len:].mean().item()
            if T > train_len else None, "x4_acc": per[j + k].item(), "id_acc_x4free": per[j + k + 1:train_len].mean()
            .item(), "per_position": [None if i < j + k else per[i].item() for i in range(T)]}


@torch.no_grad()
def evaluate_posgen(net: torch.nn.Module, seqs: np.ndarray | torch.Tensor, preset: Preset,
                    device: torch.device | str = "cpu", batch_size: int = 100) -> dict:
    """Teacher-forced loss and argmax accuracy of ``net`` (with whatever table it holds) on (N, T) sequences, as
    the authors' harness: the prediction at position i is argmax logits[:, i], compared with x_i; positions
    < j+k (the given prefix) are not scored. Returns {"loss", "id_acc", "ood_acc", "per_position"}."""
    dev, seqs, was_training = torch.device(device), torch.as_tensor(seqs), net.training
    net.eval()
    correct, loss_sum, count = torch.zeros(seqs.shape[1], dtype=torch.float64), 0.0, 0
    for i in range(0, seqs.shape[0], batch_size):
        x, y = (t.to(dev) for t in lm_batch(seqs[i:i + batch_size], preset.modulus, preset.j + preset.k))
        with _autocast(dev, preset.precision):
            logits = net(x)[0].float()
        loss_sum += F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
        correct += (logits.argmax(-1) == y).sum(0).double().cpu()
    net.train(was_training)
    return {"loss": loss_sum / count, **accuracy_summary(correct / len(seqs), preset.j, preset.k, preset.train_len)}


CURVE_KEYS = ("loss", "id_acc", "ood_acc", "x4_acc", "id_acc_x4free")  # what a validation records per split


def _validate_rows(net, tables: dict[str, PE], train_pe: PE, data: dict, preset: Preset, dev) -> dict:
    """The curves' point of one validation epoch: under each row's evaluation table, loss and accuracies on the
    val split ("val_loss", "id_acc", …) and on the test split ("test_loss", "test_id_acc", …, and the accuracy at
    every position, "test_per_position"), so any selection rule can later read its epoch's test numbers without
    retraining. The training table is put back."""
    out = {}
    for name, table in tables.items():
        net.set_pe(table)
        v, t = (evaluate_posgen(net, data[split], preset, dev) for split in ("val", "test"))
        out[name] = {("val_loss" if key == "loss" else key): v[key] for key in CURVE_KEYS} | {
            f"test_{key}": t[key] for key in (*CURVE_KEYS, "per_position")}
    net.set_pe(train_pe)
    return out


def decay_groups(net: torch.nn.Module, decay_gains: bool = False) -> list[dict]:
    """AdamW parameter groups of the trained weights (a frozen one gets no update, not even decay): matrices
    decay, 1-D weights (norm gains) only with ``decay_gains``."""
    params = [p for p in net.parameters() if p.requires_grad]
    if decay_gains:
        return [{"params": params}]
    return [{"params": [p for p in params if p.dim() >= 2]}, {"params": [p for p in params if p.dim() < 2],
                                                              "weight_decay": 0.0}]


def posgen_optimizer(net: torch.nn.Module, preset: Preset, schedule: str, total_steps: int):
    """AdamW with PyTorch's one-cycle cosine schedule. ``authors``: every trained weight decays and β1 follows
    the schedule (OneCycleLR's cycle_momentum, on in their Lightning config); ``ours``: norm gains do not decay."""
    opt = torch.optim.AdamW(decay_groups(net, schedule == "authors"), lr=preset.lr, weight_decay=preset.weight_decay)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, preset.lr, total_steps=total_steps, pct_start=preset.pct_start,
                                                    cycle_momentum=schedule == "authors")


def posgen_step(fwd, opt, sched, x: torch.Tensor, y: torch.Tensor, precision: str) -> torch.Tensor:
    """One optimiser step on a batch; the loss is returned on the device (summing it needs no host sync)."""
    with _autocast(x.device, precision):
        loss = fwd(x, y)[1]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach()


def train_posgen(task: str, pe: str, seed: int, preset: str | Preset = "quick", harness: str | Harness = "code",
                 runs_root: str | Path = "runs", device: str = "cpu", stop_after: int | None = None) -> dict:
    """Train the run of one (task, PE, seed), resuming from its checkpoint if one exists.

    The model is initialised after ``torch.manual_seed(seed)``; cross-entropy on every token after the given
    prefix; ``posgen_optimizer``; batches drawn by a generator seeded with the seed, checkpointed with the model,
    optimizer, schedule and dropout RNG after every epoch. Every ``val_every`` epochs (and the last) the val and
    test splits are scored under the evaluation table of every row sharing this run (the curves,
    ``_validate_rows``). ``stop_after``: at most this many epochs in this call (as if killed). Returns {"epoch",
    "elapsed_s", "history"}: rows {"epoch", "loss", "lr", "elapsed_s"} and, on validation epochs, "val": {row: …}.
    """
    (p, harness), dev = check_run_args(task, pe, preset, harness), torch.device(device)
    sharing = pes_sharing(pe, harness.protocol)
    meta, out = run_meta(task, sharing[0], seed, p, harness), run_dir(runs_root, p, harness, task, sharing[0], seed)
    torch.manual_seed(seed)
    (net, train_pe), data = posgen_model(meta), posgen_data(meta)
    tables = {row: posgen_pes(row, harness.protocol, p.train_len, p.test_len)[1] for row in sharing}
    steps = math.ceil(p.n_train / p.batch_size)
    opt, sched = posgen_optimizer(net.to(dev), p, harness.schedule, steps * p.epochs)
    state = resume_training(out / "ckpt.pt", meta, net, opt, sched) or {"epoch": 0, "elapsed_s": 0.0, "history": []}
    gen = torch.Generator().manual_seed(seed)  # the data order
    if "rng_data" in state:
        gen.set_state(state["rng_data"])
    x, y = (t.to(dev) for t in lm_batch(torch.from_numpy(data["train"]), p.modulus, p.j + p.k))
    fwd = torch.compile(net) if dev.type == "cuda" else net  # not on CPU, where it does not pay off here
    t_call, first = time.perf_counter(), state["epoch"]
    last = p.epochs if stop_after is None else min(p.epochs, first + stop_after)
    for epoch in range(first, last):
        t0, perm, loss_sum = time.perf_counter(), torch.randperm(len(x), generator=gen).to(dev), 0.0
        net.train()
        for idx in perm.split(p.batch_size):
            loss_sum += posgen_step(fwd, opt, sched, x[idx], y[idx], p.precision)
        row = {"epoch": epoch + 1, "loss": float(loss_sum) / steps, "lr": sched.get_last_lr()[0],
               "elapsed_s": state["elapsed_s"] + time.perf_counter() - t0}
        if (epoch + 1) % p.val_every == 0 or epoch + 1 == p.epochs:
            row["val"] = _validate_rows(net, tables, train_pe, data, p, dev)
        state["history"].append(row)
        state.update(epoch=epoch + 1, elapsed_s=row["elapsed_s"], rng_data=gen.get_state())
        save_training(out / "ckpt.pt", meta, net, opt, sched,
                      **{k: state[k] for k in ("epoch", "elapsed_s", "history", "rng_data")})
        write_json(out / "log.json", {"meta": meta, "epochs": state["history"]})
        progress(f"{task}/{sharing[0]}/seed{seed} epoch {epoch + 1}/{p.epochs}  loss {row['loss']:.3f}" + "".join(
            f"  {r}: val_loss {v['val_loss']:.3f} id {_pct(v['id_acc'])} ood {_pct(v['ood_acc'])}"
            for r, v in row.get("val", {}).items()), epoch + 1 - first, last - first, time.perf_counter() - t_call)
    return state


def select_epoch(history: list[dict], pe: str, rule: str) -> dict:
    """The validated epoch of row ``pe`` that a selection rule reports (the first one where a rule ties):

    ``best_val_id`` the best validation ID accuracy (the authors' ModelCheckpoint: max, strict improvement);
    ``last`` the last validation; ``min_val_loss`` the lowest validation loss (mostly OOD positions: the val
    split is L' long); ``best_val_id_x4`` the best validation ID over positions j+k+1 … L−1 (x_4 left out);
    ``best_val_ood`` the best validation OOD accuracy — what the authors' ``val/acc_ood_best`` logs; it selects
    on OOD itself, so it is a diagnostic of what the paper may have reported, never a default.
    """
    validated = [h for h in history if pe in h.get("val", {})]
    if rule not in SELECT_RULES or not validated:
        raise ValueError(f"rule must be one of {SELECT_RULES} and row {pe!r} validated at least once, got {rule!r}")
    if rule == "last":
        return validated[-1]
    key, sign = {"best_val_id": ("id_acc", 1), "min_val_loss": ("val_loss", -1),
                 "best_val_id_x4": ("id_acc_x4free", 1), "best_val_ood": ("ood_acc", 1)}[rule]
    return max(validated, key=lambda h: sign * h["val"][pe][key])  # max returns the first maximum


def test_by_rule(history: list[dict], pe: str) -> dict:
    """Row ``pe``'s test numbers at the epoch each selection rule picks, read from its curves:
    {rule: {"epoch", "loss", "id_acc", "ood_acc", "x4_acc", "id_acc_x4free"}}, and for the KEPT_RULES the test
    accuracy at every position 0 … L'−1 ("per_position", None over the given prefix)."""
    out = {}
    for rule in SELECT_RULES:
        h = select_epoch(history, pe, rule)
        out[rule] = {"epoch": h["epoch"]} | {key: h["val"][pe][f"test_{key}"] for key in CURVE_KEYS} | (
            {"per_position": h["val"][pe]["test_per_position"]} if rule in KEPT_RULES else {})
    return out


def run_posgen(task: str, pe: str, seed: int, preset: str | Preset = "quick", harness: str | Harness = "code",
               runs_root: str | Path = "runs", device: str = "cpu") -> dict:
    """Train (or resume, or reuse) the run of one row and report its test accuracy at the epoch each rule selects.

    A finished row's ``result.json`` is reused when its settings match. Returns {"task", "pe", "seed", "harness",
    "preset", "by_select": ``test_by_rule``, "epoch", "id_acc", "ood_acc", "x4_acc", "id_acc_x4free" (those of
    ``harness.select``), "trained_as", "train_s", "history" (this row's curves, one entry per epoch)}. A row
    sharing another row's training has "trained_as" set to that row and train_s = 0: the time is counted once,
    on the row that owns it.
    """
    preset, harness = check_run_args(task, pe, preset, harness)
    meta, trained_as = run_meta(task, pe, seed, preset, harness), training_run_pe(pe, harness.protocol)
    result_path = run_dir(runs_root, preset, harness, task, pe, seed) / "result.json"
    result = read_json(result_path, "a run") if result_path.is_file() else {}
    if result.get("meta") != json.loads(json.dumps(meta)):  # none yet, or of other settings or an older format
        state = train_posgen(task, pe, seed, preset, harness, runs_root, device)
        history = [{k: v for k, v in h.items() if k != "val"} | h.get("val", {}).get(pe, {})
                   for h in state["history"]]  # this row's validation numbers only
        result = {"meta": meta, "task": task, "pe": pe, "seed": seed, "preset": preset.name, "trained_as": trained_as,
                  "train_s": state["elapsed_s"] if trained_as == pe else 0.0, "history": history,
                  "by_select": test_by_rule(state["history"], pe)}
        write_json(result_path, result)
    chosen = result["by_select"][harness.select]
    reported = {k: chosen[k] for k in ("epoch", "id_acc", "ood_acc", "x4_acc", "id_acc_x4free")}
    return result | {"harness": dataclasses.asdict(harness)} | reported


# ----------------------------------------------------------------------------------------------------------
# LLaMA fine-tuning (Sec. 6.2.1, App. C.2)


@dataclasses.dataclass(frozen=True)
class LlamaRun:
    """Everything that decides the result of one fine-tuning run (the command line's options, one each).

    Defaults follow App. C.2 (YaRN's recipe with the paper's ~100M-token budget): AdamW, lr 2e-5, weight decay
    0.01, linear warm-up over the first 5 % of the steps, then constant. The global batch of 64 sequences makes
    100M tokens at the target length L' = s·L = 16K about 100 steps, as the paper's 13B run (FT@16K, 100 steps).
    """

    model: str = "smollm2"          # HF directory, .gguf file, or a name of model.LLAMA_MODELS
    pe: str = "res_yarn:2"          # [res_]METHOD[:FACTOR]
    original_len: int | None = None  # L; None: the checkpoint's own (8192 for SmolLM2)
    alpha: float | None = None      # YaRN's α, β (App. C.2); None: the method's (1, 32; Llama 3: 1, 4)
    beta: float | None = None
    seq_len: int | None = None      # training length; None: the target L' = s·L ("FT@target" of Table 2)
    train_tokens: int = 100_000_000  # steps = train_tokens // (batch_size · seq_len)
    batch_size: int = 64            # sequences per optimiser step, over all processes
    micro_batch: int = 1            # sequences per forward; the rest of a step is gradient accumulation
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.05            # share of the steps with a linear warm-up
    text: str | None = None         # .txt or .jsonl ("text" per line, as PG19); None: Python's standard library
    heldout_docs: int = 4           # documents kept out of training, written to heldout.jsonl for evaluation
    heldout_min_tokens: int | None = None  # a held-out document has at least this many tokens; None: L'
    seed: int = 0
    grad_checkpointing: bool = True


def stdlib_documents(n: int | None = None, packages: bool = False) -> list[tuple[str, str]]:
    """The ``n`` largest modules of Python's standard library (by bytes, then path) as (path, text): long code
    documents that exist on every machine, in the spirit of Proof-pile / GitHub long-context sets. The top-level
    modules; with ``packages`` also those inside its packages (its tests included; site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = {p.relative_to(root).as_posix(): p for p in root.glob("**/*.py" if packages else "*.py")
             if p.is_file() and p.relative_to(root).parts[0] not in ("site-packages", "dist-packages")}
    largest = sorted(files, key=lambda name: (-files[name].stat().st_size, name))[:n]
    return [(name, files[name].read_text(encoding="utf-8", errors="replace")) for name in largest]


def read_documents(paths: list[str]) -> list[tuple[str, str]]:
    """Documents from .txt files (one each) or .jsonl files (one per line, its ``text`` field): (name, text)."""
    docs = []
    for path in map(Path, paths):
        if path.suffix not in (".txt", ".jsonl") or not path.is_file():
            raise ValueError(f"--text takes existing .txt or .jsonl files, got {path}")
        if path.suffix == ".txt":
            docs.append((path.name, path.read_text(encoding="utf-8")))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.suffix == ".jsonl" else []):
            record = json.loads(line) if line.strip() else None
            if record is not None and not (isinstance(record, dict) and isinstance(record.get("text"), str)):
                raise ValueError(f"{path} line {i + 1} has no 'text' string")
            docs += [(f"{path.name}:{i + 1}", record["text"])] if record else []
    return docs


# Separator between packed documents: the first of these the vocabulary holds (SmolLM2: <|endoftext|>).
_DOC_SEPARATORS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def llama_data(texts: list[str], tokenizer, seq_len: int, heldout_docs: int, heldout_min_tokens: int,
               seed: int) -> tuple[torch.Tensor, list[str]]:
    """Split documents into held-out and training text; pack the training part into (N, seq_len) sequences.

    The documents are shuffled with ``seed``; the first ``heldout_docs`` of at least ``heldout_min_tokens``
    tokens are held out (long enough to score at L'). The others are concatenated, each followed by a separator
    token, and cut into sequences; the tail that does not fill one is dropped.
    """
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    ids = [enc.ids for enc in tokenizer.encode_batch([texts[i] for i in order], add_special_tokens=False)]
    held = [i for i, doc in enumerate(ids) if len(doc) >= heldout_min_tokens][:heldout_docs]
    if len(held) < heldout_docs:
        raise ValueError(f"heldout_docs = {heldout_docs} documents of >= {heldout_min_tokens} tokens are needed, "
                         f"the text has {len(held)}")
    sep = [i for i in map(tokenizer.token_to_id, _DOC_SEPARATORS) if i is not None][:1]
    stream = [t for i, doc in enumerate(ids) if i not in held for t in doc + sep]
    if len(stream) < seq_len:
        raise ValueError(f"the training text holds fewer than seq_len = {seq_len} tokens")
    n = len(stream) // seq_len
    return torch.tensor(stream[:n * seq_len]).view(n, seq_len), [texts[order[i]] for i in held]


def batch_indices(step: int, batch_size: int, n_seqs: int, seed: int) -> torch.Tensor:
    """Indices of the ``batch_size`` training sequences of optimiser step ``step``: a pure function of the step,
    so the data position of a run is its step count. Epoch e visits the N sequences in the order of a
    permutation seeded by (seed, e); a batch may straddle two epochs."""
    first, out = step * batch_size, []
    for e in range(first // n_seqs, (first + batch_size - 1) // n_seqs + 1):
        perm = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed * 100_003 + e))
        out.append(perm[max(first - e * n_seqs, 0):min(first + batch_size - e * n_seqs, n_seqs)])
    return torch.cat(out)


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up reaching 1 at step ``warmup_steps`` − 1, then constant. Unlike HF's
    schedule (which starts at 0), the first step already learns: a 5 % warm-up of a short run is one step."""
    return lambda step: min(1.0, (step + 1) / warmup_steps)


class CausalLMLoss(torch.nn.Module):
    """Mean next-token cross-entropy of a ``Llama`` over (B, T) sequences: the module DDP / FSDP wrap, so the
    loss (chunked over the vocabulary, ``Llama.token_nll``) is part of the distributed forward."""

    def __init__(self, net: model_lib.Llama):
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net.token_nll(input_ids).mean()


def prepare_llama_run(run: LlamaRun, world: int) -> tuple[model_lib.Llama, object, torch.Tensor, list[str], dict]:
    """Check the run, then load: the model with the run's PE, its tokenizer, the training sequences, the held-out
    texts, and the log's header (steps, seq_len, target_len = L' = s·L, original_len = L)."""
    if run.batch_size % (run.micro_batch * world):
        raise ValueError(f"batch_size ({run.batch_size}) must be a multiple of micro_batch × processes "
                         f"({run.micro_batch} × {world})")
    pe = PE.parse(run.pe, original_len=run.original_len, alpha=run.alpha, beta=run.beta)
    texts = [doc for _, doc in (read_documents([run.text]) if run.text else stdlib_documents(packages=True))]
    net, tokenizer = model_lib.load_llama(run.model, pe), model_lib.load_tokenizer(run.model)
    model_lib.rope_scaling_of(net.pe, net.train_len, net.config.head_dim, net.config.rope_theta)  # exportable?
    target_len = math.ceil(pe.factor * net.train_len)
    seq_len = run.seq_len or target_len
    steps = run.train_tokens // (run.batch_size * seq_len)
    if not 2 <= seq_len <= target_len or steps < 1:
        raise ValueError(f"seq_len must be in [2, s·L = {target_len}] and train_tokens >= batch_size × seq_len "
                         f"(one step), got {seq_len}, {run.train_tokens}")
    train, heldout = llama_data(texts, tokenizer, seq_len, run.heldout_docs, run.heldout_min_tokens or target_len,
                                run.seed)
    log = {"run": dataclasses.asdict(run), "steps": steps, "seq_len": seq_len, "target_len": target_len,
           "original_len": net.train_len, "world_size": world, "done": False}
    return net, tokenizer, train, heldout, log


def distribute(net: model_lib.Llama, dev: torch.device, world: int, fsdp: bool) -> torch.nn.Module:
    """The loss module the training loop calls: plain, DDP-wrapped, or FSDP2-sharded (nanoGPT's few lines)."""
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    lm = CausalLMLoss(net.to(dev).train())
    if fsdp:  # shard every block, then the root group (embeddings, final norm, head)
        from torch.distributed.fsdp import fully_shard
        for block in net.layers:
            fully_shard(block)
        return fully_shard(lm)
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(lm, device_ids=[dev.index] if dev.type == "cuda" else None)
    return lm


def finetune_llama(run: LlamaRun, out: str | Path, device: str | None = None, fsdp: bool = False,
                   save_every: int = 20, stop_after: int | None = None) -> dict:
    """Fine-tune a LLaMA whose PE is replaced by ``run.pe`` (Sec. 6.2.1, App. C.2); resumable.

    Under torchrun (WORLD_SIZE > 1) the run is data-parallel: DDP, or with ``fsdp`` FSDP2 (CUDA only). Rank r of R takes
    the r-th of R equal slices of each global batch, so a step's gradient is the same mean as in one process. ``out``
    receives ``ckpt.pt`` (every ``save_every`` steps and at the end; the step is the data position), ``log.json`` (every
    step), ``heldout.jsonl`` (for ``evaluate.py perplexity --text``) and, once done, ``model/``: an HF directory
    (``model.save_llama``). ``stop_after``: at most this many steps in this call (as if killed). Returns the log.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    if fsdp and not torch.cuda.is_available():
        raise ValueError("--fsdp shards the model over GPUs (torchrun on CUDA devices); none is available")
    dev = torch.device(device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"))
    net, tokenizer, train, heldout, log = prepare_llama_run(run, world)
    torch.manual_seed(run.seed)
    net.gradient_checkpointing = run.grad_checkpointing
    lm = distribute(net, dev, world, fsdp)
    opt = torch.optim.AdamW(decay_groups(net), lr=run.lr, weight_decay=run.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(max(1, math.ceil(run.warmup * log["steps"]))))
    state = resume_training(Path(out) / "ckpt.pt", log["run"], net, opt, sched)
    first, log["history"], elapsed = state.get("step", 0), state.get("history", []), state.get("elapsed_s", 0.0)
    if rank == 0:
        atomic_write(Path(out) / "heldout.jsonl", lambda p: Path(p).write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in heldout)))
    last = log["steps"] if stop_after is None else min(log["steps"], first + stop_after)
    t_call, tokens = time.perf_counter(), run.batch_size * log["seq_len"]
    for step in range(first, last):
        t0, idx = time.perf_counter(), batch_indices(step, run.batch_size, len(train), run.seed)
        loss, lr = _llama_step(lm, opt, sched, train, idx.chunk(world)[rank].split(run.micro_batch), dev, fsdp, world)
        elapsed += time.perf_counter() - t0
        log["history"].append({"step": step + 1, "loss": loss, "lr": lr, "tokens": (step + 1) * tokens,
                               "tok_s": tokens / (time.perf_counter() - t0), "elapsed_s": elapsed})
        if (step + 1) % save_every == 0 or step + 1 == log["steps"]:
            save_training(Path(out) / "ckpt.pt", log["run"], net, opt, sched, rank, step=step + 1,
                          elapsed_s=elapsed, history=log["history"])
        if rank == 0:
            write_json(Path(out) / "log.json", log)
            progress(f"step {step + 1}/{log['steps']}  loss {loss:.3f}  tok/s {log['history'][-1]['tok_s']:.0f}",
                     step + 1 - first, last - first, time.perf_counter() - t_call)
    if len(log["history"]) == log["steps"]:
        full = dcp.get_model_state_dict(net, options=_FULL)  # a collective under FSDP
        log["done"] = True
        if rank == 0:
            final = model_lib.Llama(net.config, net.pe)  # a plain CPU copy: no DDP/FSDP wrapping, no hooks
            final.load_state_dict(full)
            model_lib.save_llama(final, Path(out) / "model", tokenizer)
            write_json(Path(out) / "log.json", log)
    if world > 1:
        torch.distributed.barrier()
    return log


def _llama_step(lm, opt, sched, train: torch.Tensor, micro: tuple[torch.Tensor, ...], dev: torch.device,
                fsdp: bool, world: int) -> tuple[float, float]:
    """One optimiser step over this rank's micro-batches of sequence indices: (mean loss over ranks, lr)."""
    loss_sum = torch.zeros((), device=dev)
    for k, mb in enumerate(micro):
        if fsdp:  # reduce gradients once per step, not per micro-batch
            lm.set_requires_gradient_sync(k == len(micro) - 1)
        elif world > 1:
            lm.require_backward_grad_sync = k == len(micro) - 1  # DDP, as nanoGPT
        with _autocast(dev):
            loss = lm(train[mb].to(dev)) / len(micro)
        loss.backward()
        loss_sum += loss.detach()
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if world > 1:
        torch.distributed.all_reduce(loss_sum)
    return loss_sum.item() / world, lr


# ----------------------------------------------------------------------------------------------------------
# The machinery both loops share: checkpoints, progress lines, precision, FLOP counts.


# Full (unsharded) state dicts keyed by parameter name: one checkpoint serves 1 process, DDP and FSDP.
_FULL = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_training(path: Path, meta: dict, net, opt, sched, rank: int = 0, **extra) -> None:
    """Checkpoint a run atomically: model, optimizer, scheduler, torch (and CUDA) RNG, and ``extra`` fields.
    Under FSDP every rank gathers the full state (a collective); rank 0 writes it."""
    state = {"meta": meta, "model": dcp.get_model_state_dict(net, options=_FULL), "rng_torch": torch.get_rng_state(),
             "optimizer": dcp.get_optimizer_state_dict(net, opt, options=_FULL), "scheduler": sched.state_dict(),
             **({"rng_cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}), **extra}
    if rank == 0:
        atomic_write(path, lambda p: torch.save(state, p))


def resume_training(path: Path, meta: dict, net, opt, sched) -> dict:
    """Load the checkpoint at ``path`` (of a run with settings ``meta``) into the run; its dict, {} if none."""
    if not path.exists():
        return {}
    state = load_checkpoint(path, meta)
    dcp.set_model_state_dict(net, state["model"], options=_FULL)
    dcp.set_optimizer_state_dict(net, opt, state["optimizer"], options=_FULL)
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    if torch.cuda.is_available() and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    return state


def load_checkpoint(path: str | Path, meta: dict | None = None) -> dict:
    """A ``torch.save``d dict read with ``weights_only=True``; with ``meta``, it must be a run of those settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch each raise their own error types on a bad file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "meta" not in state:
        raise ValueError(f"{path} is not a finetune.py checkpoint")
    if meta is not None and state["meta"] != meta:
        raise ValueError(f"{path} holds a run with other settings; remove it or choose another directory")
    return state


def progress(what: str, done: float, total: float, elapsed: float) -> None:
    """One progress line on stderr: what was done, elapsed time and an ETA from the share of work done."""
    eta = elapsed * (total - done) / done if done else math.nan
    print(f"{what}  elapsed {fmt_s(elapsed)}  eta {fmt_s(eta)}", file=sys.stderr, flush=True)


def fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _autocast(dev: torch.device, precision: str = "bf16"):
    """bf16 autocast on CUDA when ``precision`` is "bf16"; fp32 otherwise, always on CPU (determinism, and the
    authors' fp32). "tf32" (fp32 weights and activations, TF32 matmuls) is CUDA's global flag, set per run."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" and precision == "bf16")


def model_flops_per_token(net: torch.nn.Module, n_layer: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token as PaLM counts them (Chowdhery et al., 2022, App. B), for MFU: 6 per weight of
    every matmul (the ``nn.Linear`` layers, a tied LM head included; an embedding lookup is free) plus
    12·n_layer·d_model·T for attention's score and value matmuls over a T-token context."""
    n_matmul = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    return 6 * n_matmul + 12 * n_layer * d_model * seq_len


# ----------------------------------------------------------------------------------------------------------
# The command line (its argument types, shared by every script, are resonance.py's).


HARNESS_HELP = {  # the command line's text for each Harness field
    "freeze_ffn": "keep the FFN and its norm at their initialisation",
    "tie_head": "LM head = the embedding (T5)",
    "attention": "t5: no 1/√d, Mesh-TF init, final dropout; sdpa: logits/√d, N(0, 0.02)",
    "split": "authors: cycled prefixes, val/test inside train; disjoint: the paper's",
    "schedule": "authors: decay on all weights, β1 cycled 0.95→0.85; ours: no decay on gains, β1 0.9",
    "select": "the reported epoch (select_epoch): best_val_id is the authors' rule; the others read the curves"}


def add_preset_args(p: argparse.ArgumentParser) -> None:
    """A preset, the preset fields that can be changed on their own (``preset_from_args``), the depth, and where
    and how its runs train."""
    p.add_argument("--preset", default="quick", choices=PRESETS, help="model size and budget (default %(default)s)")
    p.add_argument("--epochs", type=number(int, 1, 100_000), help="training epochs (default: the preset's)")
    p.add_argument("--n-layer", type=number(int, 1, 64), help="Transformer blocks (default: the harness's, 6 for code "
                   "(the authors' released t5-small config), 2 for paper (App. C.1's text))")
    p.add_argument("--precision", choices=PRECISIONS, help="CUDA matmuls (default: the preset's; CPU: always fp32)")
    p.add_argument("--runs-dir", default="runs", type=path_for("dir"), help="root of the run directories "
                   "(default %(default)s)")
    p.add_argument("--device", default=default_device(), type=device, help="cpu, cuda or cuda:N (default %(default)s)")


def add_posgen_args(p: argparse.ArgumentParser) -> None:
    """The arguments that name a PosGen run (shared with ``evaluate.py table1``):
    a protocol, then any harness field switched on its own."""
    add_preset_args(p)
    p.add_argument("--protocol", default="code", choices=PROTOCOLS, help="the harness to start from "
                   "(default %(default)s)")
    for f in dataclasses.fields(Harness)[2:]:  # the protocol above, the depth in add_preset_args
        p.add_argument(f"--{f.name.replace('_', '-')}", choices=HARNESS_CHOICES.get(f.name), metavar=None if f.type
                       != "bool" else "{true,false}", type=boolean if f.type == "bool" else str,
                       help=f"{HARNESS_HELP[f.name]} (default: the protocol's; {f.default} for code)")


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The named preset with ``--epochs`` / ``--precision`` replaced; a changed preset is named for it
    ("cot+epochs=4"), so its runs get their own directories and results files."""
    given = {k: v for k in ("epochs", "precision") if (v := getattr(args, k, None)) is not None}
    if given.get("precision", "fp32") != "fp32" and not getattr(args, "merge", None) and args.device.type == "cpu":
        raise ValueError(f"--precision {given['precision']} is a CUDA setting: on the CPU every run trains in fp32")
    preset = PRESETS[args.preset]
    changed = {k: v for k, v in given.items() if getattr(preset, k) != v}
    name = preset.name + "".join(f"+{k}={v}" for k, v in changed.items())
    return dataclasses.replace(preset, name=name, **changed)


def harness_from_args(args: argparse.Namespace) -> Harness:
    """The protocol's harness (``code`` where the command has no --protocol) with each field given on the command
    line replaced."""
    given = {f.name: v for f in dataclasses.fields(Harness)[1:] if (v := getattr(args, f.name, None)) is not None}
    return dataclasses.replace(HARNESSES[getattr(args, "protocol", "code")], **given)


def cmd_posgen(args: argparse.Namespace) -> int:
    r = run_posgen(args.task, args.pe, args.seed, preset_from_args(args), harness_from_args(args), args.runs_dir,
                   args.device)
    print(f"{r['task']} {r['pe']} seed {r['seed']} ({r['preset']} preset, harness {r['harness']}): epoch {r['epoch']}"
          f"  ID acc {_pct(r['id_acc'])}  OOD acc {_pct(r['ood_acc'])}  training {fmt_s(r['train_s'])}")
    return 0


def cmd_llama(args: argparse.Namespace) -> int:
    run = LlamaRun(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LlamaRun)})
    out = args.out or Path("runs") / "llama" / run.pe.replace(":", "-s")
    log = finetune_llama(run, out, device=args.device, fsdp=args.fsdp, save_every=args.save_every)
    if int(os.environ.get("RANK", 0)) == 0:
        last = log["history"][-1]
        print(f"{run.pe}: {log['steps']} steps of {run.batch_size} × {log['seq_len']} tokens, final loss "
              f"{last['loss']:.3f}, wall {fmt_s(last['elapsed_s'])}; model and held-out text in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A fine-tuned run (its ``model/``) or any model, with its PE (or ``--pe``), as files stock runtimes run:
    an HF directory (transformers, vLLM) and/or a GGUF file (llama.cpp, ollama)."""
    if not (args.hf or args.gguf):
        raise ValueError("give --hf OUT_DIR and/or --gguf OUT.gguf")
    source = Path(args.source) / "model" if (Path(args.source) / "model" / "config.json").is_file() else args.source
    net = model_lib.load_llama(source, args.pe)
    tokenizer = model_lib.load_tokenizer(source) if Path(model_lib.resolve_model_path(source)).is_file() or (
        Path(source) / "tokenizer.json").is_file() else None
    if args.hf:
        model_lib.save_llama(net, args.hf, tokenizer)
    if args.gguf:
        model_lib.save_gguf(net, args.gguf, tokenizer, args.dtype)
    print(f"{source} with pe {net.pe} written to {' and '.join(p for p in (args.hf, args.gguf) if p)}"
          + ("" if tokenizer else " (no tokenizer found: GGUF tokenizer model 'no_vocab')"))
    return 0


RUN_HELP = {  # the command line's text for each LlamaRun field
    "model": "HF directory, .gguf file or smollm2", "pe": "[res_]METHOD[:FACTOR]",
    "original_len": "L; None: the checkpoint's", "alpha": "YaRN α; None: the method's",
    "beta": "YaRN β; None: the method's", "seq_len": "training length; None: the target s·L",
    "train_tokens": "token budget", "batch_size": "sequences per optimiser step",
    "micro_batch": "sequences per forward (the rest: accumulation)", "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay", "warmup": "share of the steps warming up",
    "text": ".txt or .jsonl documents; None: Python's stdlib", "heldout_docs": "documents kept out of training",
    "heldout_min_tokens": "a held-out document's least tokens; None: L'", "seed": "data order and init seed",
    "grad_checkpointing": "turn gradient checkpointing off (default: on; off is faster, takes more memory)"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="finetune.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("posgen", help="train one PosGen run (Sec. 6.1) and test it")
    p.add_argument("--task", required=True, choices=posgen.TASKS, help="the PosGen rule")
    p.add_argument("--pe", required=True, choices=PE_NAMES, help="the Table 1 row")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=5549, help="the run's seed (default %(default)s)")
    add_posgen_args(p)
    p.set_defaults(func=cmd_posgen)
    p = sub.add_parser("llama", help="fine-tune a LLaMA with a scaled PE (Sec. 6.2.1, App. C.2); resumable; "
                                     "data-parallel under torchrun; options: the fields of LlamaRun")
    count, positive = number(int, 1), number(float, 0)
    types = {"pe": pe_spelling, "original_len": count, "alpha": positive, "beta": positive,
             "seq_len": number(int, 2), "train_tokens": count, "batch_size": count, "micro_batch": count,
             "lr": positive, "weight_decay": positive, "warmup": number(float, 0, 1), "heldout_docs": count,
             "heldout_min_tokens": count, "seed": number(int, 0, 2**32 - 1)}
    for f in dataclasses.fields(LlamaRun):
        if f.name == "grad_checkpointing":
            p.add_argument("--no-grad-checkpointing", dest=f.name, action="store_false", help=RUN_HELP[f.name])
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=types.get(f.name), default=f.default,
                           help=RUN_HELP[f.name] + " (default %(default)s)")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 (torchrun on GPUs)")
    p.add_argument("--save-every", type=count, default=20, help="checkpoint every this many steps "
                   "(default %(default)s)")
    p.add_argument("--out", type=path_for("dir"), help="run directory (default runs/llama/<pe>)")
    p.add_argument("--device", type=device, help="cpu, cuda or cuda:N (default: "
                   "cuda:LOCAL_RANK when available, else cpu)")
    p.set_defaults(func=cmd_llama)
    p = sub.add_parser("export", help="write a run's model (or any model) for stock transformers and llama.cpp")
    p.add_argument("source", help="a run directory of 'finetune.py llama', an HF directory, a .gguf file or smollm2")
    p.add_argument("--pe", type=pe_spelling, help="run it with this PE instead of its own")
    p.add_argument("--hf", type=path_for("dir"), help="write an HF directory here")
    p.add_argument("--gguf", type=path_for("file"), help="write a GGUF file here")
    p.add_argument("--dtype", choices=model_lib.GGUF_DTYPES, default="f32", help="GGUF matrices (default %(default)s)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
