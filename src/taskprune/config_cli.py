"""``taskprune config``: validate config files and show the experiment grid they define.

Useful before a long run: every key is checked by the same schema the Snakefile uses, and the grid
(variants, tasks, recovery selection) is printed so a researcher sees how many jobs a change implies.
"""

from __future__ import annotations

import argparse
import json

from taskprune.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="FILE", help="config YAML files (later ones override)")
    parser.add_argument("--json", action="store_true", help="print the resolved config as JSON")


def run(args: argparse.Namespace) -> int:
    from taskprune import grid

    cfg = load_config(*args.configs)
    if args.json:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True))
        return 0
    pruned = grid.pruned_variants(cfg)
    recovered = grid.recovered_variants(cfg)
    print(f"config OK: {', '.join(args.configs)}")
    for name, m in cfg.models.items():
        if m.source == "pretrained":
            src = m.path
        else:
            src = f"continued from {m.training.init}" if m.training.init else "trained from scratch"
        levels = ", ".join(f"{x.pct:g}" for x in cfg.levels_for(name))
        print(f"  model {name}: task {m.task}, distractors {', '.join(m.distractors)}, {src}; levels {levels}")
    print(f"  methods: {', '.join(cfg.pruning.methods)}; random seeds: {', '.join(map(str, cfg.pruning.seeds))}")
    for method, own in cfg.pruning.method_levels.items():
        print(f"  method {method}: only at levels {', '.join(f'{x:g}' for x in own)}")
    print(f"  variants: {len(cfg.models)} base, {len(pruned)} pruned, {len(recovered)} recovered")
    return 0
