"""A model whose score is not top-1 accuracy: four yes/no attributes of a digit, scored by per-example F1.

    python -m examples.multilabel --out runs/multilabel          # from the repository root
    python -m examples.multilabel --quick --out /tmp/multilabel  # the CI form (tiny preset, ~2-3 min)

The same CNN and split as ``own_model.py``; what is new is the target (4 floats per image), the loss
(``loss``: binary cross-entropy on the 4 logits, which rlprune fine-tunes with) and the metric (``f1``), which
returns one score per example in points, so every result gets a bootstrap interval and RL is compared with the
best baseline on the same test images. Every number rlprune searches on, predicts (its SPN learns the drop in
F1) and reports is this F1: ``rlprune run ... --metric examples.multilabel:f1 --loss examples.multilabel:loss``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import rlprune
from examples.own_model import SmallCNN, example_args, fit, split_digits

ATTRIBUTES = ("even", "greater than 4", "prime", "has a loop")
# Row d: digit d's attributes (1 has none of them, 8 has three).
TABLE = torch.tensor([[d % 2 == 0, d > 4, d in (2, 3, 5, 7), d in (0, 6, 8, 9)] for d in range(10)],
                     dtype=torch.float32)


def build() -> nn.Module:
    return SmallCNN(outputs=len(ATTRIBUTES))


def datasets() -> dict[str, TensorDataset]:
    return {s: TensorDataset(x, TABLE[y]) for s, (x, y) in split_digits().items()}


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, targets)


@torch.no_grad()
def f1(model: nn.Module, loader) -> np.ndarray:
    """F1 of each image's predicted attribute set against its true one, x 100 (0-100, higher is better).

    An image with no attribute (the digit 1) scores 100 when none is predicted: every example gets a finite
    score, as rlprune requires of per-example scores.
    """
    device = next(model.parameters()).device
    scores = []
    for x, y in loader:
        pred, true = model(x.to(device)) > 0, y.to(device) > 0.5
        both = (pred & true).sum(1).double()
        size = (pred.sum(1) + true.sum(1)).double()
        scores.append(torch.where(size > 0, 200 * both / size.clamp(min=1), torch.full_like(size, 100.0)))
    return torch.cat(scores).cpu().numpy()


def train_and_save(path: Path, epochs: int = 20) -> Path:
    torch.save(fit(build(), datasets()["train"], loss=loss, epochs=epochs).state_dict(), path)
    return path


def main(argv=None) -> dict | None:
    args, out = example_args(argv, __doc__, "runs/multilabel")
    weights = train_and_save(out / "multilabel.pt", epochs=8 if args.quick else 20)

    # The metric as rlprune will see it: the unpruned model's F1 on the validation split.
    task = rlprune.make_task(build, datasets, weights=weights, metric=f1, loss=loss)
    print(f"{task}: unpruned {task.metric_name} {task.evaluate(task.base_model(), 'validation')['acc']:.2f} "
          f"(validation)")

    # The whole job through the CLI, as you would type it (run from the repository root, so that
    # `examples.multilabel` imports here and in every Ray trial).
    cmd = ["rlprune", "run", "--model", "examples.multilabel:build", "--weights", str(weights),
           "--data", "examples.multilabel:datasets", "--metric", "examples.multilabel:f1",
           "--loss", "examples.multilabel:loss", "--target-macs", "0.5",
           "--preset", "tiny" if args.quick else "quick", "--out", str(out / "run")]
    print("CLI:", shlex.join(cmd))
    if args.no_run:
        return None
    # `python -m rlprune.cli` is the `rlprune` command, run with this interpreter from the repository root.
    done = subprocess.run([sys.executable, "-m", "rlprune.cli", *cmd[1:], "--json"], stdout=subprocess.PIPE,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        sys.exit(done.returncode)
    summary = json.loads(done.stdout)
    for m in sorted(summary["methods"], key=lambda m: -m["val_acc"]):
        print(f"  {m['method']:<32} val {summary['metric']} {m['val_acc']:6.2f}  test {m['acc']:6.2f} "
              f"[{m['acc_ci'][0]:.2f}-{m['acc_ci'][1]:.2f}]  MACs {m['macs_ratio']:.3f}")
    print(f"winner: {summary['winner']} -> {summary['pruned_model']} (rlprune.load_pruned)")
    return summary


if __name__ == "__main__":
    main()
