"""Progress reporting that reads well in both places a stage runs: a terminal and a Snakemake log file.

On a terminal, a tqdm bar. Anywhere else (``> logs/x.log 2>&1``), a tqdm bar is carriage-return noise, so
the stage writes a plain line instead every ``interval_s`` seconds and one at the end:
``train: 120/800 step (15%), 31.2 s, 3.85 step/s, loss=2.871``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0


class PlainProgress:
    """The part of tqdm's interface the stages use (iterate, ``update``, ``set_postfix``, ``with``), as lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        interval_s: float = DEFAULT_INTERVAL_S,
        stream: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.interval_s = enabled, interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.start = self.last_line = clock()
        self.closed = False

    def line(self) -> str:
        elapsed = self.clock() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}{pct}, {elapsed:.1f} s{rate}{post}"

    def _emit(self) -> None:
        if self.enabled:
            print(self.line(), file=self.stream, flush=True)
        self.last_line = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_line >= self.interval_s:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "PlainProgress: nothing to iterate over"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    interval_s: float = DEFAULT_INTERVAL_S,
    stream: TextIO | None = None,
    **tqdm_options: Any,
) -> Any:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else :class:`PlainProgress` lines.

    ``enabled=False`` silences both (the stages' ``--no-progress``); ``tqdm_options`` (``leave``,
    ``mininterval``) apply to the bar only.
    """
    out = stream if stream is not None else sys.stderr
    if enabled and out.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=out, **tqdm_options)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, interval_s=interval_s,
                         stream=out)


__all__ = ["PlainProgress", "progress_bar"]
