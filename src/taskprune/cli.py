"""The ``taskprune`` command: one subcommand per pipeline stage.

Each stage lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int | None``.
Modules are imported only when their subcommand is chosen, so ``taskprune --help`` is instant and a stage
pays only for the libraries it uses. A :class:`~taskprune.errors.TaskpruneError` is printed as one line
(``taskprune <stage>: error: ...``) with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line description)
STAGES: dict[str, tuple[str, str]] = {
    "config": ("taskprune.config_cli", "validate a config file and print the resolved grid"),
    "data": ("taskprune.data", "prepare task suites: results/data/{task}/{split}.parquet"),
    "train": ("taskprune.train", "train an embedded tiny generalist, or a specialist (from it or from scratch)"),
    "stats": ("taskprune.stats", "stream per-neuron activation statistics of one model on one dataset"),
    "scores": ("taskprune.scores", "compute a neuron score table (selectivity, taker, wanda, ...)"),
    "prune": ("taskprune.prune", "physically remove MLP neurons into a smaller checkpoint"),
    "recover": ("taskprune.recover", "LoRA fine-tune a pruned checkpoint and merge it back"),
    "evaluate": ("taskprune.evaluate", "generate and score one model variant on its tasks"),
    "harness": ("taskprune.harness", "evaluate one model variant with lm-evaluation-harness (lm_eval)"),
    "metrics": ("taskprune.metrics", "collect evaluation outputs into results/metrics.parquet"),
    "bench": ("taskprune.bench", "efficiency benchmarks: parameters, memory, tokens/s"),
    "bench-stats": ("taskprune.bench_stats", "benchmark statistics collection against baselines"),
    "bench-generation": ("taskprune.bench_generation", "benchmark batched generation against a batch-1 loop"),
    "findings": ("taskprune.findings", "decide from the data whether each claim of the paper reproduced"),
    "overlap": ("taskprune.overlap", "overlap of two specialists' selective neurons vs chance; vs the generalist"),
    "figures": ("taskprune.figures", "render figures and summary tables"),
}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskprune",
        description="Find the task-specific MLP neurons of a specialised LM, prune them into a smaller "
        "checkpoint, and measure what is lost, what recovers and what is gained.",
        epilog="Run 'taskprune <stage> --help' for a stage's options. The whole pipeline: snakemake --cores N",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from taskprune import __version__

    return f"taskprune {__version__}"


def _stage_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_text = STAGES[name]
    module = importlib.import_module(module_name)
    doc = (module.__doc__ or help_text).strip()
    parser = argparse.ArgumentParser(
        prog=f"taskprune {name}",
        description=doc.splitlines()[0] if doc else help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser, module


def resource_usage() -> str:
    """This process's CPU time and peak memory, its subprocesses' included (e.g. the code sandbox).

    Every stage logs it at the end, so a job's log says what the job used also where Snakemake's
    ``benchmark:`` cannot see it (a job forked from the warm worker runs outside the job's process tree).
    """
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    peak_mb = max(own.ru_maxrss, children.ru_maxrss) / 1024  # Linux: KiB
    forked = ", forked from the warm worker: RSS includes its shared pages" if os.environ.get("TASKPRUNE_FORKED") else ""
    return f"resources: cpu_time={cpu_s:.2f} s, max_rss={peak_mb:.0f} MB (peak of one process{forked})"


def main(argv: Sequence[str] | None = None) -> int:
    from taskprune.errors import TaskpruneError

    args_list = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not args_list or args_list[0] in ("-h", "--help") or args_list[0] == "--version":
        top.parse_args(args_list or ["--help"])
        return 0
    name = args_list[0]
    if name not in STAGES:
        top.parse_args(args_list)  # argparse prints "invalid choice" with the list and exits 2
        return 2
    debug = "--debug" in args_list
    if not sys.stderr.isatty():  # a log file: no library progress bars either (ours print plain lines)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' own bars
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # imported before the variable was set (the warm worker)
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        parser, module = _stage_parser(name)
        args = parser.parse_args(args_list[1:])
        _setup_logging(args.verbose)
        rc = module.run(args)  # type: ignore[attr-defined]
        logging.getLogger("taskprune").info("%s: %s", name, resource_usage())
        return int(rc or 0)
    except TaskpruneError as exc:
        if debug:
            raise
        print(f"taskprune {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"taskprune {name}: interrupted", file=sys.stderr)
        return 130


def forked_main(argv: list[str]) -> int:
    """``taskprune argv`` in a child forked from the warm worker (``taskprune.perf.isolation``'s ``cli`` entry)."""
    sys.argv = ["taskprune", *argv]
    return main(argv)


def entry() -> None:  # pragma: no cover - console-script shim
    """Console script: hand the command to the warm worker when Snakemake started one (see worker.py)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("TASKPRUNE_WORKER_SOCKET"):
        from taskprune.worker import try_run_via_worker

        rc = try_run_via_worker(sys.argv[1:])
        if rc is not None:
            sys.exit(rc)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
