"""Forward hooks installed on a model's modules for the duration of a ``with`` block.

:class:`taskprune.model.activations.StatsCollector` (the pipeline's statistics) and
:class:`taskprune.perf.stats_bench.PaperHooks` (the paper's baseline it is benchmarked against) both
subclass :class:`HookSet`. Torch-free; may be imported by anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

_H = TypeVar("_H", bound="HookSet")


class HookSet:
    """Registers the hooks of :meth:`_install` on ``__enter__`` and removes them all on ``__exit__``.

    A subclass sets ``self._handles = []`` in its ``__init__`` and yields one handle per registered hook.
    """

    _handles: list[Any]

    def _install(self) -> Iterator[Any]:
        raise NotImplementedError

    def __enter__(self: _H) -> _H:
        for handle in self._install():
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
