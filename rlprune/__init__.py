"""rlprune: find per-group pruning ratios with multi-agent RL against a learned world model, on Ray.

The public API is imported lazily so that ``import rlprune.space.costmodel`` (used by env workers) does not
pull in torch-pruning. The package has one folder per concept: ``space`` (groups, cost model, real pruning),
``measure`` (``MeasureSpec`` and the one measuring recipe), ``samples``, ``spn``, ``search``, ``pipeline``
(``rlprune run``) and ``cli``; ``envs`` and ``policies`` hold the RLlib env and modules.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlprune")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

_LAZY = {
    "PruningSpace": "rlprune.space.pruning",
    "Group": "rlprune.space.pruning",
    "FEATURE_NAMES": "rlprune.space.pruning",
    "CostModel": "rlprune.space.costmodel",
    "MeasureSpec": "rlprune.measure.spec",
    "save_pruned": "rlprune.io",
    "load_pruned": "rlprune.io",
    "model_fingerprint": "rlprune.io",
    "load_quantized": "rlprune.quant.export",
    "get_task": "rlprune.tasks",
    "list_tasks": "rlprune.tasks",
    "Task": "rlprune.tasks",
    "make_task": "rlprune.tasks",
    "UserTask": "rlprune.tasks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlprune' has no attribute {name!r}")
