"""What the benchmark tests share: where the scripts live, reading their CSVs, interval checks, and the quick runs.

The benchmark scripts are run as a user runs them (a subprocess, into a temporary folder, with the session's
``RLPRUNE_CACHE`` from conftest.py), so the committed results under ``benchmarks/results`` are never touched.
The fixtures built on these (``quick``, ``bench``) live in conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESUMABLE = ("quality", "label_fidelity", "quantize", "targets", "search_speed")
"""Scripts whose quick run gets a ``--work`` folder, so a test can run them again into it and see them resume."""


def read_rows(path: Path) -> list[dict]:
    """A results CSV as a list of row dicts (pandas types: numbers are numbers)."""
    return pd.read_csv(path).to_dict("records")


def assert_in_ci(value, lo, hi) -> None:
    """``value`` lies in ``[lo, hi]`` (to float rounding): an interval must contain its own estimate."""
    assert float(lo) - 1e-6 <= float(value) <= float(hi) + 1e-6, (value, lo, hi)


def run_script(name: str, *args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python benchmarks/<name>.py ARGS`` from the repository root, with this process's environment."""
    kwargs.setdefault("env", dict(os.environ))
    return subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def quick_runs(mktemp: Callable[[str], Path]) -> Callable[[str], tuple[Path, subprocess.CompletedProcess]]:
    """``name -> (results folder, finished process)``: each script's ``--quick`` run, made on first use only.

    Args:
        mktemp: makes a fresh temporary folder from a name (``tmp_path_factory.mktemp``).
    Returns:
        The function the ``quick`` fixture hands to tests; it asserts the run exited 0.
    """
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        if name not in done:
            out = mktemp(f"bench-{name}")
            resumable = ["--work", str(out / "work")] if name in RESUMABLE else []
            if name in ("quantize", "search_speed", "quality"):  # their tests rerun from the kept rows
                resumable += ["--keep-rows", str(out / "kept")]
            if name == "quantize":  # of a pruned model, as `rlprune run --quantize` has it: one run tests both
                pruned = out / "pruned"
                subprocess.run([sys.executable, "-m", "rlprune.cli", "prune", "--task", "digits", "--uniform", "0.3",
                                "--out", str(pruned)], cwd=ROOT, env=dict(os.environ), check=True,
                               capture_output=True, timeout=300)
                resumable += ["--pruned", str(pruned)]
            if name == "search_speed":  # a sweep of two targets, one seed: the sweep test and the tables share it
                resumable += ["--targets", "0.4", "0.6", "--seeds", "0"]
            if name == "quality":  # the samples and SPN first (--samples-only, its own results folder), then the rest
                first = run_script(name, "--quick", "--samples-only", "--results-dir", str(out / "samples-only"),
                                   *resumable)
                assert first.returncode == 0, first.stderr[-4000:]
            proc = run_script(name, "--quick", "--results-dir", str(out), *resumable)
            assert proc.returncode == 0, proc.stderr[-4000:]
            done[name] = (out, proc)
        return done[name]

    return run
