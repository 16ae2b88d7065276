"""A pruning level as one typed value, from where it is read to where neurons are counted.

A level enters the pipeline in exactly two ways, and each has its one parser:

- from the config (``pruning.levels``, ``models.<name>.levels``, ``bench.levels``, ...), a YAML number:
  :meth:`Level.from_config` writes it as it appears in paths (``10`` -> '10', ``15.71`` -> '15.71');
- from a path or a command line (a Snakemake ``{level}`` wildcard, ``--level``, a variant path):
  :meth:`Level.from_label` reads the label as written.

After that a :class:`Level` is carried as it is (grid variants, ``levels_for``, ``removal_count``), so the
label in paths and the ``level`` column, the exact value neurons are counted from, and the ``level_pct``
column are the same level by construction. Torch-free and dependency-free (the config imports it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction


@functools.total_ordering
@dataclass(frozen=True)
class Level:
    """One pruning level: the percent of MLP neurons removed.

    ``label`` is the percentage as written in paths and the ``level`` column ('15.71'); ``fraction`` is that
    percentage as an exact :class:`~fractions.Fraction` (1571/100: neurons are counted from it with exact
    decimal arithmetic); ``pct`` is it as a float (the ``level_pct`` column, 15.71). Levels order by value.
    """

    label: str
    fraction: Fraction
    pct: float

    @classmethod
    def from_config(cls, value: float | int | str) -> Level:
        """A config value, labelled as in paths: ``10`` -> '10', ``15.71`` -> '15.71'.

        The label is ``f"{x:g}"`` for a whole number (or where that is no longer than ``repr(x)``), else
        ``repr(x)``: never rounded. The config schema has checked the value lies in [0, 100).
        """
        x = float(value)
        label = f"{x:g}" if x == int(x) or len(f"{x:g}") >= len(repr(x)) else repr(x)
        return cls.from_label(label)

    @classmethod
    def from_label(cls, text: str) -> Level:
        """A label as written in a path or on a command line (``'15.71'``), checked to lie in [0, 100).

        Raises :class:`ValueError` with the reason (callers add the flag or path it came from).
        """
        try:
            fraction = Fraction(str(text).strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a percentage such as 15.71, got {str(text)!r}") from None
        if not 0 <= fraction < 100:
            raise ValueError(f"{text} is outside [0, 100)")
        return cls(str(text), fraction, float(fraction))

    def __str__(self) -> str:
        return self.label

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return (self.fraction, self.label) < (other.fraction, other.label)


#: the level of a base (unpruned) model: '0' in the ``level`` column
ZERO = Level.from_label("0")
