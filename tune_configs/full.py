"""Run tune_configs/full.yaml on the Ray cluster this script runs in (for the cluster launcher).

    ray up cluster.yaml
    ray submit cluster.yaml tune_configs/full.py -- --out /shared/rlprune/full --samples /shared/rlprune/samples

``ray submit`` copies only this file to the head node, so the YAML is looked up next to it first and then in
the rlprune checkout that cluster.yaml's setup commands create (``~/rlprune``). The same run from a laptop
that can reach the cluster: ``ray job submit --address http://HEAD:8265 -- rlprune tune tune_configs/full.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from rlprune.errors import RlpruneError
    from rlprune.pipeline.config import load_yaml
    from rlprune.pipeline.run import run_pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().with_name("full.yaml")
    p.add_argument("--config", default=str(here if here.is_file() else Path.home() / "rlprune/tune_configs/full.yaml"))
    p.add_argument("--out", help="output folder (on a cluster: a path the head node keeps)")
    p.add_argument("--samples", help="sample store every node mounts, e.g. /shared/rlprune/samples")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: the one this node runs)")
    args = p.parse_args(argv)
    try:
        cfg = load_yaml(args.config, out=args.out, samples=args.samples)
        summary = run_pipeline(cfg, address=args.address)
    except RlpruneError as e:
        print(f"full.py: error: {e}", file=sys.stderr)
        return 2
    print(f"winner {summary['winner']}: {summary['pruned_model']}; report in {summary['out']}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
