"""The ``bench-stats`` stage: benchmark statistics collection against its baselines.

Argument parsing and orchestration only; the passes, the paper's baseline hooks and the peak-memory
subprocesses live in :mod:`taskprune.perf.stats_bench` (rows of ``results/bench/stats_collection.parquet``
described there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from taskprune.errors import ConfigError
from taskprune.perf.stats_bench import APPROACHES, benchmark_model

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: Any) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--run", nargs=3, action="append", default=[], metavar=("NAME", "MODEL_DIR", "DATA"),
                        help="a model to benchmark: its name, checkpoint and prompt Parquet (repeatable)")
    parser.add_argument("--model-path", help="one model to benchmark (instead of --run)")
    parser.add_argument("--data", help="its prompt Parquet (with --model-path)")
    parser.add_argument("--model", help="its name in the table (with --model-path; default: the directory name)")
    parser.add_argument("--output", required=True, help="results/bench/stats_collection.parquet")
    parser.add_argument("--throughput-prompts", type=int, default=1000, help="prompts per throughput pass")
    parser.add_argument("--memory-prompts", type=int, nargs="+", default=[1000, 4000],
                        help="prompt counts for the peak-memory subprocesses")
    parser.add_argument("--memory-approaches", nargs="*", choices=APPROACHES, default=list(APPROACHES),
                        help="approaches whose peak memory is measured")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per approach")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    add_config_arguments(parser)


def run(args: Any) -> int:
    import polars as pl
    import torch

    from taskprune.config import StatsConfig
    from taskprune.io import write_parquet
    from taskprune.options import stage_options
    from taskprune.stats import _chat_template_flag, _chat_template_option

    opts = stage_options(args, {"stats": StatsConfig, "device": "auto", "chat_template": False, "model": None})
    chat_template = _chat_template_option(opts.model, "--options") or _chat_template_flag(opts.chat_template)
    runs = [tuple(r) for r in args.run]
    if args.model_path or args.data:
        if not (args.model_path and args.data):
            raise ConfigError("--model-path and --data go together (or use --run NAME MODEL_DIR DATA)")
        runs.append((args.model or Path(str(args.model_path).rstrip("/")).name, args.model_path, args.data))
    if not runs:
        raise ConfigError("nothing to benchmark: give --model-path and --data, or --run NAME MODEL_DIR DATA")
    if args.throughput_prompts < 1 or args.rounds < 1 or min(args.memory_prompts) < 1:
        raise ConfigError("--throughput-prompts, --rounds and --memory-prompts must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name, model_path, data in runs:
        rows += benchmark_model(
            name, model_path, data, stats_cfg=opts.stats, device=opts.device,
            throughput_prompts=args.throughput_prompts, memory_prompts=sorted(set(args.memory_prompts)),
            memory_approaches=args.memory_approaches, rounds=args.rounds, threads=args.threads,
            chat_template=chat_template,
        )
    table = pl.DataFrame(rows, infer_schema_length=None)
    write_parquet(table, args.output, metadata={"stats": opts.stats.model_dump(), "torch": torch.__version__})
    for row in table.filter(pl.col("goal").is_not_null()).iter_rows(named=True):
        log.info("%s %s %s at %d prompts: ratio %.3f (%s: %s)", row["model"], row["approach"], row["kind"],
                 row["n_prompts"], row["ratio"], row["goal"], "met" if row["goal_met"] else "NOT met")
    return 0

