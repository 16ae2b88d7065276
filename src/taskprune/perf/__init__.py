"""Performance measurement: what the benchmark stages (``bench``, ``bench-stats``, ``bench-generation``) share.

- :mod:`~taskprune.perf.engines`: the decoding engines timed (the stock transformers forward, the tight
  hand-written decoder);
- :mod:`~taskprune.perf.isolation`: THE fork server and its protocol; every measurement runs in a fresh
  process forked from it, and the Snakemake warm worker (:mod:`taskprune.worker`) is the same server;
- :mod:`~taskprune.perf.measure`: one checkpoint's parameters, bytes on disk, peak memory, tokens/s;
- :mod:`~taskprune.perf.paired`: paired, interleaved throughput of a shape family, with a CI;
- :mod:`~taskprune.perf.gather`: ``results/bench/efficiency.parquet`` from those;
- :mod:`~taskprune.perf.stats_bench`, :mod:`~taskprune.perf.generation_bench`: statistics collection and
  batched generation against their baselines;
- :mod:`~taskprune.model.hooks`: forward hooks held for a ``with`` block (shared with :mod:`taskprune.stats`).

Who may import it: the stage modules and :mod:`taskprune.worker` (isolation). Planning which shapes are
measured is the grid's (:func:`taskprune.grid.bench_plan`, :func:`taskprune.grid.family_plans`), so the
Snakefile never imports this package at parse time. Modules here import spine modules (errors, config, io,
grid) and the model/arch helpers, never a stage module except :mod:`taskprune.stats`' collection functions
(``stats_bench`` benchmarks them). Nothing here imports torch at module level.
"""
