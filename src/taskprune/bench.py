"""The ``bench`` stage: efficiency benchmarks of the variants (``taskprune bench <action>``).

- ``measure``: one variant checkpoint's parameters, bytes on disk and peak memory at batch 1
  (:mod:`taskprune.perf.measure`);
- ``family``: paired, interleaved throughput of a shape family, the base against each level, with a CI
  (:mod:`taskprune.perf.paired`; the plans come from :func:`taskprune.grid.family_plans`);
- ``gather``: ``results/bench/efficiency.parquet`` (:mod:`taskprune.perf.gather`);
- ``profile`` and ``compare``: diagnosis over the engines (:mod:`taskprune.perf.engines`);
- ``composition``: diagnosis of a shape family's composed depth against direct full depth
  (:func:`taskprune.perf.paired.check_composition`).

Argument parsing and orchestration only; the logic lives in :mod:`taskprune.perf`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from taskprune.errors import DataError, TaskpruneError

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("prefill", "decode")


def add_arguments(parser: Any) -> None:
    import argparse

    from taskprune.options import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="{measure,family,gather,profile,compare,composition}")
    measure = sub.add_parser(
        "measure",
        help="parameters, bytes on disk and peak memory of one variant checkpoint (per-variant Parquet)",
        description="Measure one variant checkpoint's parameters, bytes on disk and peak memory at batch 1 (fresh "
        "processes) into a per-variant Parquet: one row per variant it labels. Throughput: 'bench family'.",
    )
    measure.add_argument("--checkpoint", required=True, help="the checkpoint directory to measure")
    measure.add_argument(
        "--variant", required=True, help="its variant path, e.g. tiny-math/selective/35.71/0"
    )
    measure.add_argument("--output", required=True, help="per-variant Parquet to write")
    measure.add_argument(
        "--label-variant",
        action="append",
        default=[],
        metavar="VARIANT",
        help="also emit rows for this variant from the same measurement (it must have the same shapes; "
        "repeatable). The measured_variant column names the timed checkpoint.",
    )
    measure.add_argument(
        "--label-checkpoint",
        action="append",
        default=[],
        metavar="DIR",
        help="checkpoint of each --label-variant, in order (optional): shapes are verified and its own "
        "bytes on disk recorded",
    )
    measure.add_argument(
        "--engine",
        choices=["auto", "tight", "hf"],
        default="auto",
        help="generation path: tight (own decode loop, Llama/Qwen2/Mistral), hf (stock forward + static "
        "cache + torch.compile), auto (tight where supported; default)",
    )
    add_config_arguments(measure)
    gather_p = sub.add_parser(
        "gather",
        help="join shape-family and per-variant files into efficiency.parquet",
        description="Attach every shape family's paired speedups to the variants it describes, with their "
        "parameters, bytes and peak memory.",
    )
    gather_p.add_argument("inputs", nargs="*", help="per-variant Parquet files from 'bench measure'")
    gather_p.add_argument("--families", nargs="+", required=True, help="shape-family files from 'bench family'")
    gather_p.add_argument("--output", required=True, help="e.g. results/bench/efficiency.parquet")
    fam = sub.add_parser(
        "family",
        help="paired, interleaved throughput of one shape family (base vs every level, fresh process per trial)",
        description="Measure a shape family's base and pruned levels in alternating fresh-process trials and "
        "write one row per (level, engine, batch size, phase) with the median paired speedup and its CI.",
    )
    fam.add_argument("--plan", required=True, help="the family plan as JSON (taskprune.grid.FamilyPlan)")
    fam.add_argument("--output", required=True, help="e.g. results/bench/families/tiny.parquet")
    fam.add_argument("--trials", help="optional Parquet of every trial's timings")
    prof = sub.add_parser(
        "profile",
        help="print where the time of one benchmarked phase goes (torch.profiler, diagnosis only)",
        description="Profile one phase of the benchmarked generation path in this process and print the "
        "operators sorted by their own CPU time (nothing is written).",
    )
    prof.add_argument("--checkpoint", required=True)
    prof.add_argument("--batch-size", type=int, default=32)
    prof.add_argument("--phase", choices=PHASES, default="decode")
    prof.add_argument("--engine", choices=["auto", "tight", "hf"], default="auto")
    prof.add_argument("--rows", type=int, default=25, help="operators to show")
    add_config_arguments(prof)
    comp = sub.add_parser(
        "compare",
        help="speedup of one checkpoint over the base from interleaved fresh-process runs (diagnosis)",
        description="Measure a base and a variant checkpoint alternately in fresh processes (ABBA...) and "
        "print the median within-round speedup next to the ideal one. Robust to load drifting on a shared "
        "machine; nothing is written unless --output is given.",
    )
    comp.add_argument("--base", required=True, help="base checkpoint directory")
    comp.add_argument("--checkpoint", required=True, help="variant checkpoint directory")
    comp.add_argument("--batch-size", type=int, default=32)
    comp.add_argument("--phase", choices=PHASES, default="decode")
    comp.add_argument("--rounds", type=int, default=6)
    comp.add_argument("--engine", choices=["auto", "tight", "hf"], default="auto")
    comp.add_argument("--output", help="optional Parquet of the per-round measurements")
    add_config_arguments(comp)
    compo = sub.add_parser(
        "composition",
        help="a shape family's composed-depth times against direct full depth on this machine (diagnosis)",
        description="For a bench.shapes family with measured_layers: time the base and every level with "
        "measured_layers decoder layers (composed to full depth) and with all layers, in alternating fresh "
        "processes, and write one row per (level, engine, batch size, phase) with both times, their ratio "
        "and both speedups. Full depth is slow: minutes per round for Qwen2.5-1.5B shapes on 2 cores.",
    )
    compo.add_argument("--family", required=True, help="a bench.shapes entry, e.g. qwen2.5-1.5b")
    compo.add_argument("--rounds", type=int, default=3, help="rounds of alternating trials (default 3)")
    compo.add_argument("--output", required=True, help="e.g. results/bench/composition-qwen2.5-1.5b.parquet")
    add_config_arguments(compo)
    for p in (measure, fam, gather_p, prof, comp, compo):  # accept the global flags after the action too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )


def run(args: Any) -> int:
    from taskprune.config import BenchConfig
    from taskprune.io import write_parquet
    from taskprune.options import stage_options
    from taskprune.perf.measure import compare_paired, measure_variant, profile_phase

    if args.action == "gather":
        from taskprune.perf.gather import gather_efficiency

        table = gather_efficiency(args.inputs, args.families)
        from taskprune.io import read_parquet_metadata

        # each family file's own record of how it was measured
        methods = {str(p): read_parquet_metadata(p).get("measurement") for p in args.families}
        write_parquet(table, args.output, metadata={"inputs": [str(p) for p in args.inputs],
                                                    "families": [str(p) for p in args.families],
                                                    "measurement": methods})  # fmt: skip
        log.info("wrote %d rows to %s", table.height, args.output)
        return 0
    if args.action == "family":
        from taskprune.grid import FamilyPlan
        from taskprune.perf.paired import method_metadata, run_family

        try:
            plan = FamilyPlan(**json.loads(args.plan))
        except (TypeError, ValueError) as exc:
            raise DataError(f"--plan: not a family plan ({exc})") from None
        trials, table = run_family(plan)
        meta = {"measurement": method_metadata(plan)}
        if args.trials:
            write_parquet(trials, args.trials, metadata=meta)
        write_parquet(table, args.output, metadata=meta)
        log.info("wrote %d rows to %s", table.height, args.output)
        return 0
    if args.action == "composition":
        from taskprune.config import load_config
        from taskprune.grid import family_plans
        from taskprune.perf.paired import check_composition

        if args.options:
            raise DataError("bench composition: give the whole config with --config FILE (the family plans need it)")
        plans = family_plans(load_config(*(args.config or ["config/config.yaml"])))
        if args.family not in plans:
            raise DataError(f"--family {args.family!r}: expected one of the config's shape families {sorted(plans)}")
        plan = plans[args.family]
        table = check_composition(plan, args.rounds)
        write_parquet(table, args.output, metadata={"plan": plan.to_json(), "rounds": args.rounds})
        print(table)
        return 0
    options = stage_options(args, {"bench": BenchConfig, "device": "auto"})
    bench = options.bench
    if args.action == "compare":
        table, summary = compare_paired(
            args.base,
            args.checkpoint,
            bench,
            args.batch_size,
            args.phase,
            args.rounds,
            device=options.device,
            engine=args.engine,
        )
        print(table)
        print(json.dumps(summary, indent=2))
        if args.output:
            write_parquet(table, args.output, metadata={**summary, "bench": bench.model_dump()})
        return 0
    if args.action == "profile":
        print(
            profile_phase(
                args.checkpoint,
                args.batch_size,
                args.phase,
                bench,
                device=options.device,
                engine=args.engine,
                row_limit=args.rows,
            )
        )
        return 0
    if not bench.batch_sizes or any(b < 1 for b in bench.batch_sizes):
        raise TaskpruneError(f"bench.batch_sizes must be positive integers, got {bench.batch_sizes}")
    rows = measure_variant(
        args.checkpoint,
        args.variant,
        bench,
        device=options.device,
        engine=args.engine,
        label_variants=args.label_variant,
        label_checkpoints=args.label_checkpoint,
    )
    write_parquet(
        rows,
        args.output,
        metadata={
            "checkpoint": args.checkpoint,
            "variant": args.variant,
            "bench": bench.model_dump(),
            "device": options.device,
            "engine": args.engine,
        },
    )
    log.info("wrote %d rows to %s", rows.height, args.output)
    return 0

