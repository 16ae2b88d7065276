"""The ``bench-generation`` stage: batched generation against a batch-1 loop.

Argument parsing and orchestration only; what is measured, the rows of ``results/bench/generation.parquet``
and the random-weight Llama live in :mod:`taskprune.perf.generation_bench`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from taskprune.perf.generation_bench import benchmark_generation, random_llama

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--model-path", help="model checkpoint to benchmark (e.g. results/models/tiny-math)")
    parser.add_argument("--random-llama", action="store_true",
                        help="benchmark a random Llama of the embedded default's shape instead of --model-path")
    parser.add_argument("--data", nargs="+", help="eval split(s) whose 'prompt' column gives the prompts")
    parser.add_argument("--out", default="results/bench/generation.parquet", help="output Parquet file")
    parser.add_argument("--n-prompts", type=int, default=32, help="prompts to generate for (default 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int,
                        help="new tokens per prompt (default: evaluation.max_new_tokens of the data's task, else 64)")
    parser.add_argument("--implementations", nargs="+", default=["taskprune", "hf_generate"],
                        choices=["taskprune", "hf_generate"])
    parser.add_argument("--repeats", type=int, default=1, help="timed repetitions per cell (median reported)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    add_config_arguments(parser)


def _prompts(args: argparse.Namespace) -> tuple[list[str], str | None]:
    from taskprune.errors import ConfigError
    from taskprune.io import read_parquet

    if not args.data:
        if not args.random_llama:
            raise ConfigError("--data: give the eval split(s) whose prompts to generate for")
        prompts = [
            f"Question: A shop sells {i + 2} boxes of {3 * i + 4} pencils each. How many pencils are there?\nAnswer:"
            for i in range(args.n_prompts)
        ]
        return prompts, None
    prompts: list[str] = []
    for path in args.data:
        prompts += read_parquet(path, ("prompt",), what="eval split")["prompt"].to_list()
    task = Path(args.data[0]).parent.name
    return prompts[: args.n_prompts], task


def run(args: argparse.Namespace) -> int:
    import polars as pl
    import torch

    from taskprune.config import EvaluationConfig
    from taskprune.errors import ConfigError
    from taskprune.io import write_parquet
    from taskprune.model.loading import load_model, load_tokenizer
    from taskprune.options import stage_options

    opts = stage_options(args, {"evaluation": EvaluationConfig, "device": "auto"})
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model_path and not args.random_llama:
        raise ConfigError("give --model-path (a checkpoint) or --random-llama")
    if min(args.batch_sizes) < 1 or args.n_prompts < 1 or args.repeats < 1:
        raise ConfigError("--batch-sizes, --n-prompts and --repeats must be positive")
    prompts, task = _prompts(args)
    max_new = args.max_new_tokens or int(opts.evaluation.max_new_tokens.get(task or "", 64))
    batch_sizes = sorted(set(args.batch_sizes) | {1})

    with tempfile.TemporaryDirectory(prefix="taskprune-bench-gen-") as tmp:
        model_path = args.model_path
        if args.random_llama:
            model_path = str(Path(tmp) / "random-llama")
            random_llama(Path(model_path), prompts)
        model = load_model(model_path, opts.device)
        tokenizer = load_tokenizer(model_path)

    rows = benchmark_generation(model, tokenizer, prompts, max_new, batch_sizes, args.implementations, args.repeats,
                                "random-llama" if args.random_llama else str(args.model_path))
    table = pl.DataFrame(rows)
    write_parquet(table, args.out, metadata={"prompts_from": args.data, "repeats": args.repeats})
    best = table.filter(pl.col("implementation") == "taskprune").sort("batch_size").tail(1)
    if best.height:
        r = best.row(0, named=True)
        logger.info(
            "taskprune batch %d: %.1fx batch-1 throughput (CPU time: %.1fx; %.1fx stock generate at batch 1), "
            "%d thread(s); outputs identical to batch 1: %s", r["batch_size"], r["speedup_vs_batch1"],
            r["speedup_vs_batch1_cpu"], r["speedup_vs_hf_batch1"], r["threads"], r["identical_outputs"],
        )
    return 0
