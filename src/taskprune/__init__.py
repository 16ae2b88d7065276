"""taskprune: find, prune and recover the task-specific MLP neurons of specialised language models."""

__version__ = "0.1.0"
