"""Models: which architectures are supported, how their checkpoints are read and loaded, and generation.

What lives here:

- :mod:`~taskprune.model.arch`: the ``ARCHITECTURES`` registry (per ``config.model_type``: where the MLP
  neurons live and the architecture's counting facts) and the ``MLP_KINDS`` registry (per MLP kind: how it
  stores its neurons and its parameter/FLOP formula). Supporting a new model type is one entry.
- :mod:`~taskprune.model.flops`: closed-form parameter counts, FLOPs and bytes per token of a model shape.
- :mod:`~taskprune.model.checkpoint`: the one checkpoint reader: resolving a directory or hub id, the
  safetensors layout and per-layer MLP widths from the file headers, and :func:`load_pruned`.
- :mod:`~taskprune.model.loading`: device/dtype choice, tokenizers and :func:`load_model` for every stage.
- :mod:`~taskprune.model.generate`: batched greedy (or sampled) generation with a KV cache.

Who may import it: the stage modules, the ``perf``/``tasks`` subpackages and the spine's ``config`` (which
derives allowed values from the registries). This package imports only the spine's ``errors`` and
``progress`` and nothing from the stage modules or the other subpackages. Every module here is torch-free
at import time (torch and transformers are imported inside the functions that need them), so importing a
registry costs nothing.
"""
