"""taskprune: find, prune and recover the task-specific MLP neurons of specialised language models."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: ``taskprune.load_pruned`` without importing torch at package import
    if name == "load_pruned":
        from taskprune.model.checkpoint import load_pruned

        return load_pruned
    raise AttributeError(f"module 'taskprune' has no attribute {name!r}")
