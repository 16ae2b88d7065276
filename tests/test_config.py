"""The config schema: every shipped config validates, and bad configs fail with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taskprune.config import load_config, parse_method
from taskprune.errors import ConfigError
from taskprune.levels import Level

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    cfg = load_config(ROOT / "config/config.yaml")
    assert set(cfg.models) == {"tiny-math", "tiny-code"}
    assert cfg.pruning.levels == [5.71, 10, 15.71, 20, 25.71, 30, 35.71]
    assert {33, 42} <= set(cfg.pruning.seeds) and len(cfg.pruning.seeds) == 2
    smoke = load_config(ROOT / "config/config.yaml", ROOT / "config/smoke.yaml")
    assert smoke.models["tiny-math"].architecture.hidden_size < cfg.models["tiny-math"].architecture.hidden_size


def _write(tmp_path: Path, override: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(override))
    return p


BAD = [
    ({"pruning": {"levls": [10]}}, ["pruning.levls", "did you mean 'levels'"]),
    ({"pruning": {"levels": [10, 100]}}, ["pruning.levels", "outside [0, 100)"]),
    ({"pruning": {"levels": [10, -1]}}, ["pruning.levels", "outside [0, 100)"]),
    ({"pruning": {"levels": [10, 10.0]}}, ["pruning.levels", "duplicated"]),
    ({"pruning": {"methods": ["selektive"]}}, ["pruning.methods", "unknown pruning method 'selektive'"]),
    ({"pruning": {"seeds": "33"}}, ["pruning.seeds", "'33'"]),
    ({"device": "tpu"}, ["device", "'tpu'"]),
    ({"evaluation": {"batch_size": 0}}, ["evaluation.batch_size", "greater than or equal to 1"]),
    ({"models": {"tiny-math": {"task": "algebra"}}}, ["tiny-math.task", "'algebra' is not a task"]),
    ({"models": {"tiny-math": {"architecture": {"intermediate_size": 256}}}}, ["intermediate_size", "5x"]),
    ({"modles": {}}, ["'modles'", "did you mean 'models'"]),
    ({"tasks": {"math": {"kind": "algebra"}}}, ["tasks.math.kind", "'algebra'"]),
    ({"recovery": {"r": "sixteen"}}, ["recovery.r", "'sixteen'"]),
    ({"models": {"tiny-math": {"training": {"mix": {"target": 0.5}}}}}, ["mix", "sum to 1"]),
    ({"pruning": {"method_levels": {"reverse-magnitud": [10]}}},
     ["pruning.method_levels.reverse-magnitud", "unknown pruning method"]),
    ({"pruning": {"method_levels": {"reverse": [12]}}},
     ["pruning.method_levels.reverse", "['12'] are not pruning levels of model tiny-math"]),
    ({"pruning": {"method_levels": {"reverse": [10, 10]}}}, ["duplicated"]),
]


@pytest.mark.parametrize(("override", "expected"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_one_line(tmp_path, override, expected):
    bad = _write(tmp_path, override)
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config/config.yaml", bad)
    msg = str(info.value)
    assert "\n" not in msg
    for piece in expected:
        assert piece in msg, msg


def test_cli_bad_config_exit_code_and_single_line(tmp_path):
    bad = _write(tmp_path, {"pruning": {"levls": [10]}})
    proc = subprocess.run(
        [sys.executable, "-m", "taskprune.cli", "config", str(ROOT / "config/config.yaml"), str(bad)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'levels'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_snakemake_rejects_bad_config_with_one_line(tmp_path):
    bad = _write(tmp_path, {"pruning": {"levels": [10, 120]}})
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "taskprune: error" in ln]
    assert len(errors) == 1 and "pruning.levels" in errors[0] and "120" in errors[0], proc.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("pruning: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


@pytest.mark.parametrize(("level", "text"), [(10, "10"), (10.0, "10"), (15.71, "15.71"), (5.405, "5.405"), (30.405, "30.405")])
def test_level_label_from_config(level, text):
    assert Level.from_config(level).label == text


def test_parse_method():
    assert parse_method("selective") == ("selective", "selectivity")
    assert parse_method("reverse-magnitude") == ("reverse", "magnitude")
    assert parse_method("random") == ("random", "random")
    with pytest.raises(ValueError):
        parse_method("reverse-random")


def test_method_levels_restrict_that_method_only(tmp_path):
    """pruning.method_levels: the method is pruned (and recovered at 'max') at its own levels only; the others
    keep every level; an overlay whose methods drop the method drops its levels too."""
    from taskprune.grid import pruned_variants, recovered_variants

    override = {
        "pruning": {"levels": [5.71, 10, 20, 35.71], "methods": ["selective", "reverse", "random", "reverse-magnitude"],
                    "seeds": [33], "method_levels": {"reverse-magnitude": [10, 20], "selective-wanda": [10]}},
        "recovery": {"methods": ["lora"], "variants": [{"method": "reverse-magnitude", "levels": "max"}]},
    }
    cfg = load_config(ROOT / "config/config.yaml", _write(tmp_path, override))
    by_method: dict[str, set[str]] = {}
    for v in pruned_variants(cfg, "tiny-math"):
        by_method.setdefault(v.method, set()).add(v.level.label)
    assert by_method == {"selective": {"5.71", "10", "20", "35.71"}, "reverse": {"5.71", "10", "20", "35.71"},
                         "random": {"5.71", "10", "20", "35.71"}, "reverse-magnitude": {"10", "20"}}
    assert [v.level.label for v in recovered_variants(cfg, "tiny-math")] == ["20"]
    assert [lv.label for lv in cfg.levels_for("tiny-math", "reverse-magnitude")] == ["10", "20"]
    assert [lv.label for lv in cfg.levels_for("tiny-math", "selective-wanda")] == ["5.71", "10", "20", "35.71"]
