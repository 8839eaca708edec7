"""Tasks: a data set with disjoint train / calibration / test splits and a cached, trained base model.

Built-in tasks are registered in ``TASKS``; any other task is named by a ``"package.module:callable"``
spec whose callable returns a ``Task`` instance::

    get_task("digits")                                   # the embedded default
    get_task("cifar10", data_dir="~/data", arch="resnet56")
    get_task("my_project.tasks:make_task", seed=1)       # a user task

``load_callable`` resolves such specs; the CLI uses it for user models too.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from rlprune.errors import ConfigError
from rlprune.tasks.base import SPLITS, Task, TrainConfig, cache_dir
from rlprune.tasks.cifar10 import Cifar10Task
from rlprune.tasks.digits import DigitsTask
from rlprune.tasks.fashion_mnist import fashion_mnist
from rlprune.tasks.user import UserTask, make_task, task_from_specs

TASKS: dict[str, Callable[..., Task]] = {
    "digits": DigitsTask,
    "cifar10": Cifar10Task,
    "fashion-mnist": fashion_mnist,
    "user": task_from_specs,
}
"""Built-in task names -> factories (keyword arguments are passed through by ``get_task``)."""


def list_tasks() -> list[tuple[str, str]]:
    """List the built-in tasks.

    Returns:
        ``(name, one-line description)`` pairs in registration order.
    """
    out = []
    for name, factory in TASKS.items():
        description = getattr(factory, "description", "") or (factory.__doc__ or "").strip().split("\n")[0]
        out.append((name, description))
    return out


def load_callable(spec: str) -> Callable[..., Any]:
    """Import the callable named by ``"package.module:attribute"`` (the attribute may be dotted).

    Args:
        spec: e.g. ``"my_project.models:build_net"`` or ``"my_project.zoo:Models.small"``.

    Returns:
        The callable object.

    Raises:
        ConfigError: if the spec is malformed, the module does not import, the attribute is missing,
            or it is not callable.
    """
    module_name, sep, attr_path = str(spec).partition(":")
    if not sep or not module_name or not attr_path:
        raise _malformed_spec(spec)
    # Imported first, on its own, so that a failing import is told apart from a missing attribute.
    try:
        importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(
            f"cannot import module {module_name!r} of {spec!r} ({type(e).__name__}: {e}); install it or add "
            "its directory to PYTHONPATH"
        ) from e
    try:
        obj = pkgutil.resolve_name(str(spec))
    except ValueError as e:  # not dotted identifiers on both sides of the colon
        raise _malformed_spec(spec) from e
    except AttributeError as e:
        # resolve_name does not say which step failed: the owner is the longest prefix that still resolves.
        parts = attr_path.split(".")
        depth = next(i for i in range(len(parts) - 1, -1, -1) if _resolves(module_name, parts[:i]))
        owner = ".".join([module_name, *parts[:depth]])
        raise ConfigError(
            f"{owner!r} has no attribute {parts[depth]!r} (from {spec!r}); check the name after the colon"
        ) from e
    if not callable(obj):
        raise ConfigError(f"{spec!r} names a {type(obj).__name__}, not a callable; point it at a function or class")
    return obj


def _malformed_spec(spec: str) -> ConfigError:
    return ConfigError(
        f"{spec!r} is not a 'package.module:callable' spec; write the importable module, a colon, "
        "and the callable's name, e.g. 'my_project.tasks:make_task'"
    )


def _resolves(module_name: str, parts: list[str]) -> bool:
    try:
        pkgutil.resolve_name(f"{module_name}:{'.'.join(parts)}")
    except AttributeError:
        return False
    return True


def get_task(spec: str, **kwargs: Any) -> Task:
    """Create a task from a registered name or a ``"package.module:callable"`` spec.

    Args:
        spec: a name in ``TASKS`` or a spec whose callable returns a ``Task`` instance.
        **kwargs: passed to the factory (e.g. ``seed``, ``data_dir``).

    Returns:
        The task instance.

    Raises:
        ConfigError: for an unknown name, a spec that cannot be loaded, or a callable that does not
            return a ``Task``.
        DataError: from a task whose data is missing (e.g. cifar10 without ``data_dir``).
    """
    if isinstance(spec, Task):  # an object made in this process (make_task): used as it is
        return spec
    if spec in TASKS:
        return TASKS[spec](**kwargs)
    if ":" not in str(spec):
        raise ConfigError(
            f"unknown task {spec!r}; choose one of: {', '.join(TASKS)}, or give a user task as "
            "'package.module:callable' returning an rlprune.tasks.Task"
        )
    factory = load_callable(spec)
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise ConfigError(
            f"{spec!r} returned a {type(task).__name__}, not an rlprune.tasks.Task; make it return an "
            "instance of a Task subclass"
        )
    return task


__all__ = [
    "SPLITS",
    "TASKS",
    "Cifar10Task",
    "DigitsTask",
    "Task",
    "TrainConfig",
    "UserTask",
    "cache_dir",
    "get_task",
    "list_tasks",
    "load_callable",
    "make_task",
    "task_from_specs",
]
