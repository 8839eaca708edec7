"""Prune your own trained model: a small CNN trained here in plain torch, then pruned with rlprune.

    python -m examples.own_model --out runs/own_model           # from the repository root
    python -m examples.own_model --quick --out /tmp/own         # the CI form (tiny preset, ~2-3 min)

rlprune needs three things from you: a function that builds the model (``build``), its trained ``state_dict``
file, and a function returning the four datasets (``datasets``). Run in Ray trials, rlprune imports both
functions by name (``examples.own_model:build``), so they live at module level and take no arguments.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rlprune
from rlprune.measure.recipe import measure_base, measure_candidate
from rlprune.pipeline.config import RunConfig
from rlprune.pipeline.run import run_pipeline

SPLITS = ("train", "calibration", "validation", "test")


class SmallCNN(nn.Module):
    def __init__(self, outputs: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(64, outputs)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def build() -> nn.Module:
    return SmallCNN()


def split_digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 8x8 digits, split 900/270/270/357. The seed is fixed: every process that calls
    this (each Ray trial does) must see the same examples in the same order."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = torch.split(order, [900, 270, 270, len(y) - 1440])
    return {s: (x[i], y[i]) for s, i in zip(SPLITS, parts, strict=True)}


def datasets() -> dict[str, TensorDataset]:
    return {s: TensorDataset(x, y) for s, (x, y) in split_digits().items()}


def fit(model: nn.Module, train: TensorDataset, loss=F.cross_entropy, epochs: int = 20) -> nn.Module:
    """A plain training loop, standing in for however you trained your model."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
    return model.eval()


def train_and_save(path: Path, epochs: int = 20) -> Path:
    torch.save(fit(build(), datasets()["train"], epochs=epochs).state_dict(), path)
    return path


def example_args(argv, doc: str, default_out: str) -> tuple[argparse.Namespace, Path]:
    """The flags both examples take, and their output folder (created)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", default=default_out, help="folder for the weights and the run")
    p.add_argument("--quick", action="store_true", help="short training and the tiny preset (a smoke run)")
    p.add_argument("--no-run", action="store_true", help="stop before `rlprune run`")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a model this small runs fastest on one thread; more only fight over the cores
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return args, out


def main(argv=None) -> dict | None:
    args, out = example_args(argv, __doc__, "runs/own_model")

    # (a) Your side: a trained model saved as a state_dict.
    weights = train_and_save(out / "own_model.pt", epochs=8 if args.quick else 20)

    # (b) The Python API: the task, its prunable groups, one uniform pruning measured for real (30% of every
    # group's channels: a conv's cost scales with its inputs times its outputs, so about half the MACs remain).
    task = rlprune.make_task(build, datasets, weights=weights)
    spec = rlprune.MeasureSpec()
    space = spec.task_space(task)
    print(f"{task}: {len(space.groups)} prunable groups, {space.base_macs:,} MACs")
    for g in space.groups:
        print(f"  {g.id}  {g.channels:3d} channels  rooted at {g.root}")
    base = measure_base(task, task.base_model(), spec)
    row, _ = measure_candidate(task, space, [0.3] * len(space.groups), base, spec, method="uniform-0.3")
    print(f"unpruned: {task.metric_name} {base['acc']:.2f} (test); uniform 0.3: {row['acc']:.2f} "
          f"[95% CI {row['acc_ci'][0]:.2f}-{row['acc_ci'][1]:.2f}] after {row['finetune_steps']} fine-tune "
          f"steps, {row['macs_ratio']:.3f} of the MACs")

    # (c) The whole job. The CLI and the Python entry point name the pieces by import spec, because the Ray
    # trials rebuild the task in their own processes; both forms write the same run (either resumes the other).
    preset = "tiny" if args.quick else "quick"
    specs = {"model": "examples.own_model:build", "data": "examples.own_model:datasets", "weights": str(weights)}
    print("\nCLI:", shlex.join(["rlprune", "run", "--model", specs["model"], "--weights", specs["weights"], "--data",
                               specs["data"], "--target-macs", "0.5", "--preset", preset, "--out", str(out / "run")]))
    if args.no_run:
        return None
    cfg = RunConfig.preset_config(preset, out=str(out / "run"), task="user", task_kwargs=specs, target=0.5)
    summary = run_pipeline(cfg, progress=sys.stderr.isatty())
    for m in sorted(summary["methods"], key=lambda m: -m["val_acc"]):
        print(f"  {m['method']:<32} val {m['val_acc']:6.2f}  test {m['acc']:6.2f}  MACs {m['macs_ratio']:.3f}")
    print(f"winner: {summary['winner']} -> {summary['pruned_model']} (rlprune.load_pruned)")
    return summary


if __name__ == "__main__":
    main()
