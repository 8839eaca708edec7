"""The ``rlprune train`` verb: train (or load) a built-in task's base model once, cache it, optionally commit it."""

from __future__ import annotations

import argparse
import json
import shutil
import time

from rlprune.cli.common import add_json_arg, add_task_args, emit, task_kwargs
from rlprune.errors import ConfigError

EPILOG = """examples:
  rlprune train --task fashion-mnist --arch resnet20              # 15 epochs, ~35 min on 2 idle CPU cores
  rlprune train --task fashion-mnist --arch resnet56 --commit     # also into checkpoints/ with its manifest
  rlprune train --task digits --json

A trained model is cached under $RLPRUNE_CACHE (default ~/.cache/rlprune) in a file whose name hashes the
model, the recipe, the training code and the data; every later command loads it. --commit copies it into
checkpoints/ and records how it was made in checkpoints/manifest.json, so other machines load it instead of
training (only while that hash matches). A training that is killed resumes from its last finished epoch when
the same command runs again (a snapshot next to the cache file), ending with the same weights.
"""


def add_train_parser(sub) -> None:
    """Add the ``train`` verb to the CLI's subparsers."""
    p = sub.add_parser("train", help="train (or load) a built-in task's base model and cache it",
                       description="Train the base model of a built-in task with its recipe, cache it, and report "
                                   "its validation and test accuracy (test with a 95% bootstrap interval).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(p)
    p.add_argument("--epochs", type=int, help="training epochs (default: the task's recipe)")
    p.add_argument("--commit", action="store_true",
                   help="copy the weights into checkpoints/ and record them in checkpoints/manifest.json")
    add_json_arg(p)


def cmd_train(args) -> int:
    """Run ``rlprune train``."""
    from rlprune.io import atomic_write_json
    from rlprune.measure.stats import accuracy_ci
    from rlprune.tasks import get_task
    from rlprune.tasks.training import committed_dir

    if args.task == "user":
        raise ConfigError("your own model comes trained (--weights); `rlprune train` trains built-in tasks only")
    kwargs = task_kwargs(args) | ({"epochs": args.epochs} if args.epochs is not None else {})
    task = get_task(args.task, **kwargs)
    t0 = time.perf_counter()
    model = task.base_model()
    wall = time.perf_counter() - t0
    val = task.evaluate(model, "validation")
    test = task.evaluate(model, "test", per_example=True)
    path = getattr(task, "weights_file", None) or task.cache_path()
    recipe = getattr(task, "recipe", None) or task.train_config
    obj = {"task": task.name, "arch": getattr(task, "arch", None), "seed": task.seed, "epochs": recipe.epochs,
           "source": task.base_model_source, "train_s": round(wall, 1) if task.base_model_source == "trained" else None,
           "val_acc": val["acc"], "test_acc": test["acc"], "test_acc_ci": list(accuracy_ci(test["correct"])),
           "weights": str(path), "key": path.stem.rsplit("-", 1)[-1], "fingerprint": task.fingerprint}
    if args.commit:
        dest = committed_dir()
        dest.mkdir(parents=True, exist_ok=True)
        if path.resolve() != (dest / path.name).resolve():
            shutil.copyfile(path, dest / path.name)
        manifest = dest / "manifest.json"
        entries = json.loads(manifest.read_text())["checkpoints"] if manifest.is_file() else []
        command = " ".join(["rlprune train", f"--task {args.task}", *([f"--arch {args.arch}"] if args.arch else []),
                            f"--seed {task.seed}", f"--epochs {recipe.epochs}"])
        entry = {"file": path.name, "command": command, **{k: obj[k] for k in (
            "task", "arch", "seed", "epochs", "val_acc", "test_acc", "test_acc_ci", "key", "fingerprint", "train_s")},
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        entries = [e for e in entries if e["file"] != path.name] + [entry]
        atomic_write_json(manifest, {"checkpoints": entries})
        obj["committed"] = str(dest / path.name)
    lo, hi = obj["test_acc_ci"]
    took = f"{wall:.0f} s" if obj["train_s"] else "no training"
    emit(args, obj, [f"{task.name} {obj['arch'] or ''} seed {task.seed}: {obj['source']} "
                     f"({took}), validation {val['acc']:.2f}%, "
                     f"test {test['acc']:.2f}% [95% CI {lo:.2f}-{hi:.2f}]", f"weights: {path}"]
         + ([f"committed: {obj['committed']}"] if args.commit else []))
    return 0
