"""Arguments and helpers every verb shares, each defined once: the model or task to prune, the budget
target, the measurement spec, and how results are printed.

A verb adds what it needs (``add_task_args``, ``add_target_args``, ``add_measure_args``) and reads it
back with the matching reader (``load_target``, ``read_target``, ``measure_spec``), so a flag means the
same thing, with the same checks, in every verb.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rlprune.errors import ConfigError

# Measurement flags by what they decide (flag dest = ``MeasureSpec`` field); defaults are None so a preset
# or the spec's own default fills what the user leaves out.
_SPACE_FLAGS = ("round_to", "max_ratio")
_LABEL_FLAGS = ("importance", "recalibrate", "bn_batches", "eval_batches", "label_steps", "latency_runs")
_FINAL_FLAGS = ("finetune_steps", "finetune_lr")


# ---------------------------------------------------------------------------------------- parsing
def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> ``(3, 32, 32)``.

    Raises:
        ConfigError: not three positive integers.
    """
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as e:
        raise ConfigError(f"--input-shape {text!r} is not C,H,W; write e.g. 3,32,32") from e
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r} must be three positive integers C,H,W, e.g. 3,32,32")
    return shape


def parse_ratios(text: str) -> list[float]:
    """``"0.5,0.2"`` -> ``[0.5, 0.2]`` (NaN and range are checked against the model later).

    Raises:
        ConfigError: a value that is not a number.
    """
    out = []
    for v in text.split(","):
        try:
            out.append(float(v))
        except ValueError as e:
            raise ConfigError(f"ratio {v.strip()!r} in --ratios is not a number; "
                              f"write comma-separated floats like 0.5,0.25") from e
    return out


# ---------------------------------------------------------------------------------------- task / model
def add_task_args(p: argparse.ArgumentParser, *, model_ok: bool = False, default: str | None = None) -> None:
    """``--task``, or your own model (``--model --weights --data [--metric --loss] --input-shape``),
    ``--data-dir`` and ``--seed``. With ``model_ok``, ``--model`` alone (plus ``--input-shape``) is structural
    work on an untrained model."""
    task_help = "task name (see `rlprune tasks`) or package.module:callable returning a Task"
    src = p.add_mutually_exclusive_group(required=default is None)
    src.add_argument("--task", default=default, help=task_help + (f" (default {default})" if default else ""))
    alone = " (alone: structural work only)" if model_ok else ""
    src.add_argument("--model", help="your model: package.module:callable building it; with --weights and --data "
                                     "it is pruned like a task" + alone)
    u = p.add_argument_group("your own model (with --model)")
    u.add_argument("--weights", help="state_dict file of your trained model (torch.save(model.state_dict(), F))")
    u.add_argument("--data", help="package.module:callable returning {'train', 'calibration', 'validation', "
                                  "'test'} -> torch Datasets of (input, target)")
    u.add_argument("--metric", help="package.module:fn, fn(model, loader) -> points, higher is better "
                                    "(default top-1 accuracy)")
    u.add_argument("--loss", help="package.module:fn, fn(outputs, targets) -> loss for fine-tuning "
                                  "(default cross-entropy)")
    u.add_argument("--input-shape", help="C,H,W of one input, e.g. 3,32,32 (default: from the train split)")
    p.add_argument("--data-dir", help="data folder for tasks that read local data (cifar10, fashion-mnist); "
                                      "default $RLPRUNE_DATA")
    p.add_argument("--arch", help="architecture of a built-in task that has several (cifar10: resnet20, resnet56; "
                                  "fashion-mnist: resnet20, resnet56, mobilenet)")
    p.add_argument("--seed", type=int, default=0, help="seeds the task and every random choice (default 0)")


_USER_FLAGS = ("weights", "data", "metric", "loss")
_STRUCTURAL = ("groups", "prune")  # verbs that can work on an untrained --model alone


def resolve_task(args) -> None:
    """Turn ``--model ... --data ...`` into the ``user`` task, in place, and check the flags fit together.

    Afterwards ``args.task`` names the task every verb builds (``"user"`` for your own model) and
    :func:`task_options` holds its arguments, as import specs that Ray trials rebuild it from.

    Raises:
        ConfigError: your-model flags without ``--model``, ``--model`` with weights but no data, or
            ``--data-dir`` with your own model.
    """
    if not hasattr(args, "model"):
        return
    given = [f"--{f}" for f in _USER_FLAGS if getattr(args, f, None)]
    if args.model is None:
        if given:
            raise ConfigError(f"{', '.join(given)} go(es) with --model (your own model), not --task; add --model "
                              f"package.module:build")
        return
    if args.data:
        if args.data_dir or getattr(args, "arch", None):
            raise ConfigError("--data-dir and --arch are for built-in tasks; your --model and --data name yours")
        args.task = "user"
    elif given or getattr(args, "verb", None) not in _STRUCTURAL:
        raise ConfigError(f"--model{' with ' + ', '.join(given) if given else ''} needs --data "
                          f"package.module:make_datasets (your train/calibration/validation/test datasets) and "
                          f"--weights (your trained state_dict)")


def task_options(args) -> dict:
    """The task factory's keyword arguments other than the seed: ``--data-dir``, or your model's specs."""
    if getattr(args, "task", None) == "user" and getattr(args, "model", None):
        weights = str(Path(args.weights).expanduser().resolve()) if args.weights else None
        opts = {"model": args.model, "data": args.data, "weights": weights, "metric": args.metric,
                "loss": args.loss, "input_shape": args.input_shape}
        return {k: v for k, v in opts.items() if v is not None}
    return {k: v for k in ("data_dir", "arch") if (v := getattr(args, k, None))}


def task_kwargs(args) -> dict:
    """The task factory's keyword arguments: ``--seed`` and :func:`task_options`."""
    return {"seed": args.seed, **task_options(args)}


def load_target(args, trained: bool = True):
    """``(task or None, model, example_input)`` from ``--task`` or ``--model``/``--input-shape``.

    Args:
        args: the parsed command line.
        trained: a task's trained base model (trained now if not cached); False builds its untrained model,
            enough for anything that needs the structure only (``rlprune groups``), in a blink.

    Raises:
        ConfigError: a missing or misplaced ``--input-shape``, or a factory that fails or returns no module.
    """
    import torch
    import torch.nn as nn

    from rlprune.tasks import get_task, load_callable

    if getattr(args, "task", None):
        if getattr(args, "input_shape", None) and args.task != "user":
            raise ConfigError("--input-shape goes with --model; a task knows its own input shape")
        task = get_task(args.task, **task_kwargs(args))
        return task, (task.base_model() if trained else task.build_model().eval()), task.example_input()
    if not args.input_shape:
        raise ConfigError("--model needs --input-shape C,H,W (e.g. 3,32,32)")
    shape = parse_input_shape(args.input_shape)
    factory = load_callable(args.model)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ConfigError(f"--model {args.model} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {args.model} returned {type(model).__name__}; it must return a torch.nn.Module")
    return None, model.eval(), torch.randn(1, *shape)


# ---------------------------------------------------------------------------------------- budget target
def add_target_args(p: argparse.ArgumentParser, *, required: bool = True, default_macs: float | None = None) -> None:
    """The one ``--target-macs`` / ``--target-params`` pair (mutually exclusive)."""
    t = p.add_mutually_exclusive_group(required=required)
    dflt = f" (default {default_macs})" if default_macs is not None else ""
    t.add_argument("--target-macs", type=float, help=f"pruned/original MACs to reach, e.g. 0.5{dflt}")
    t.add_argument("--target-params", type=float, help="pruned/original params to reach, e.g. 0.4")


def read_target(args, default_macs: float | None = None) -> tuple[float, str]:
    """``(target, budget)`` from the pair; ``budget`` is ``"macs"`` or ``"params"``.

    Raises:
        ConfigError: a target outside (0, 1], or none given where no default exists.
    """
    budget = "params" if args.target_params is not None else "macs"
    target = args.target_params if budget == "params" else args.target_macs
    if target is None:
        if default_macs is None:
            raise ConfigError("give --target-macs or --target-params, e.g. --target-macs 0.5")
        target = default_macs
    if not 0 < target <= 1:
        raise ConfigError(f"--target-{budget} {target} must lie in (0, 1], e.g. 0.5")
    return float(target), budget


# ---------------------------------------------------------------------------------------- measurement
def add_measure_args(p: argparse.ArgumentParser, *, label: bool = True, final: bool = True) -> None:
    """Flags onto ``MeasureSpec`` fields: the space's (always), a sample label's, the final fine-tune's."""
    g = p.add_argument_group("measurement (one spec for every number this command measures)")
    g.add_argument("--round-to", type=int, help="round kept channels down to a multiple (default 1)")
    g.add_argument("--max-ratio", type=float, help="largest ratio any group may take (default 0.9)")
    if label:
        g.add_argument("--importance", help="channel criterion: l1 (default), l2, taylor, bn_scale, random")
        g.add_argument("--no-recalibrate", dest="recalibrate", action="store_const", const=False,
                       help="skip BatchNorm recalibration on the calibration split before scoring")
        g.add_argument("--bn-batches", type=int, help="calibration batches of 128 for BN recalibration (default 4)")
        g.add_argument("--eval-batches", type=int,
                       help="calibration batches of 128 a sample or real evaluation is scored on (default: all)")
        from rlprune.measure.spec import TASK_LABEL_STEPS

        studied = ", ".join(f"{t} {k}" for t, k in TASK_LABEL_STEPS.items())
        g.add_argument("--label-steps", type=int, metavar="K",
                       help="the label's fidelity: SGD steps of a short fine-tune of its own (train split, cosine "
                            "from the fine-tune lr to 0) that every sample and online/AMC-style real evaluation "
                            "gets before it is scored (default: the task's studied label, " + studied + "; other "
                            "tasks 0 = scored right after BN recalibration; README, label fidelity). Each step "
                            "costs about one training step, so K steps make every label about K training steps "
                            "dearer; benchmarks/label_fidelity.py measures which K ranks like the fine-tuned "
                            "accuracy")
        g.add_argument("--latency-runs", type=int, help="timed batch-1 forwards per latency (default 5)")
    if final:
        g.add_argument("--finetune-steps", type=int, help="SGD steps on the train split before the final score")
        g.add_argument("--finetune-lr", type=float, help="initial fine-tune learning rate (default 0.01, cosine)")


def measure_overrides(args) -> dict:
    """The measurement flags the user gave, as ``MeasureSpec`` fields."""
    names = _SPACE_FLAGS + _LABEL_FLAGS + _FINAL_FLAGS
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def measure_spec(args, **defaults):
    """The ``MeasureSpec`` of the given flags over ``defaults``.

    Raises:
        ConfigError: a flag value the spec rejects (named).
    """
    from rlprune.measure.spec import MeasureSpec, task_measure_defaults

    studied = task_measure_defaults(getattr(args, "task", None))  # a built-in task's chosen label
    try:
        return MeasureSpec(**{**studied, **defaults, **measure_overrides(args)})
    except ConfigError as e:  # name the flag the user typed, not the spec's field
        m = re.match(r"measure\.(\w+)=(.*?) is invalid; (.*)", str(e))
        raise (ConfigError(f"--{m[1].replace('_', '-')} {m[2]} is invalid; {m[3]}") if m else e) from e


# ---------------------------------------------------------------------------------------- output
def add_json_arg(p: argparse.ArgumentParser, what: str = "one JSON object instead of a table") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what}")


def emit(args, obj, lines: list[str]) -> None:
    """Print ``obj`` as JSON with ``--json``, else the human ``lines``."""
    if args.json:
        print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        print("\n".join(lines))


# ---------------------------------------------------------------------------------------- several targets
def add_target_list_args(p: argparse.ArgumentParser, *, default_macs: float) -> None:
    """The ``--target-macs`` / ``--target-params`` pair of a verb that takes one target or a comma list.

    Read back with :func:`read_target_list` (the values stay text until then, so a bad entry gets one clear
    error from it rather than argparse's usage message).
    """
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-macs", help=f"pruned/original MACs to reach, e.g. 0.5 (default {default_macs}), "
                                         "or several, comma-separated and increasing, e.g. 0.3,0.5,0.7")
    t.add_argument("--target-params", help="pruned/original params to reach, e.g. 0.4, or several: 0.3,0.5")


def read_target_list(args, default_macs: float) -> tuple[float | tuple[float, ...], str]:
    """``(target, budget)`` from :func:`add_target_list_args`'s pair: one number stays a float (exactly what
    :func:`read_target` returns), a comma list becomes a tuple of floats.

    Args:
        args: the parsed command line.
        default_macs: the MACs target when neither flag is given.

    Returns:
        ``(target, budget)``; ``budget`` is ``"macs"`` or ``"params"``.

    Raises:
        ConfigError: an entry that is not a number or lies outside (0, 1], a list of fewer than 2 entries,
            or entries that are not distinct and increasing (one message naming the flag).
    """
    budget = "params" if args.target_params is not None else "macs"
    text = args.target_params if budget == "params" else args.target_macs
    if text is None:
        return float(default_macs), budget
    flag, example = f"--target-{budget}", "e.g. 0.3,0.5,0.7"
    values = []
    for v in str(text).split(","):
        try:
            x = float(v)
        except ValueError:
            raise ConfigError(f"{flag} {text}: {v.strip()!r} is not a number; give ratios in (0, 1], one or "
                              f"several comma-separated, {example}") from None
        if not 0 < x <= 1:  # NaN fails this too
            raise ConfigError(f"{flag} {v.strip()} must lie in (0, 1], e.g. 0.5" if "," not in str(text) else
                              f"{flag} {text}: {v.strip()} must lie in (0, 1], {example}")
        values.append(x)
    if len(values) == 1:
        return values[0], budget
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"{flag} {text}: give distinct targets in increasing order, {example}")
    return tuple(values), budget


__all__ = ["add_json_arg", "add_measure_args", "add_target_args", "add_target_list_args", "add_task_args", "emit",
           "load_target", "measure_overrides", "measure_spec", "parse_input_shape", "parse_ratios", "read_target",
           "read_target_list", "resolve_task", "task_kwargs", "task_options"]
