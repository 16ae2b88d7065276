"""A level is one typed value: the config's number and a path's label give the same Level, and every paper
level keeps its label, exact value and ``level_pct`` through both parsers."""

from __future__ import annotations

from fractions import Fraction

import pytest

from taskprune.config import load_config
from taskprune.grid import parse_variant, pruned_variants
from taskprune.levels import ZERO, Level

PAPER_1_5B = ["5.71", "10", "15.71", "20", "25.71", "30", "35.71"]
PAPER_7B = ["5.405", "10.135", "15.54", "20.27", "25", "30.405", "35.135"]


@pytest.mark.parametrize("label", PAPER_1_5B + PAPER_7B)
def test_paper_levels_round_trip(label: str) -> None:
    from_path = Level.from_label(label)
    from_config = Level.from_config(float(label))
    assert from_config == from_path
    assert (from_path.label, from_path.fraction, from_path.pct) == (label, Fraction(label), float(label))
    assert str(from_path) == label and Level.from_label(str(from_config)) == from_config
    if float(label).is_integer():
        assert Level.from_config(int(label)) == from_path


def test_config_labels_are_the_paths() -> None:
    assert Level.from_config(10.0).label == "10" and Level.from_config(0.1 + 0.2).label == repr(0.1 + 0.2)
    assert Level.from_config(15.7100001).label == "15.7100001"  # never rounded: repr unless a whole number
    assert Level.from_label("0") == ZERO and ZERO.pct == 0.0
    assert Level.from_label("10.0") != Level.from_label("10")  # different paths, same value
    assert sorted(map(Level.from_label, ["35.71", "5.71", "10"])) == [Level.from_label(x) for x in ("5.71", "10", "35.71")]


@pytest.mark.parametrize("text", ["abc", "", "1/0", "100", "-1"])
def test_bad_labels(text: str) -> None:
    with pytest.raises(ValueError, match="percentage such as 15.71|outside \\[0, 100\\)"):
        Level.from_label(text)


def test_config_and_wildcard_levels_agree() -> None:
    """Every pruned variant of the paper config: its Level equals the one read back from its path."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config/config.yaml", root / "config/paper.yaml")
    variants = pruned_variants(cfg)
    assert {v.level.label for v in variants} == set(PAPER_1_5B) | set(PAPER_7B)
    for v in variants:
        assert parse_variant(v.path) == v
        assert v.level in cfg.levels_for(v.model)
