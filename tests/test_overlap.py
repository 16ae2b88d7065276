"""The overlap analysis against brute force: Jaccard of the reverse-pruned sets, its exact chance value
(enumerating every pair of subsets), and Spearman's rho from ranks computed by hand."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from taskprune import overlap
from taskprune.levels import Level


def _brute_chance(ks: list[int], widths: list[int]) -> float:
    """Mean pooled Jaccard over every pair of k-subsets in every layer (all equally likely)."""
    per_layer = [list(itertools.product(itertools.combinations(range(w), k), repeat=2)) for k, w in zip(ks, widths, strict=True)]
    total, n = 0.0, 0
    for choice in itertools.product(*per_layer):
        inter = sum(len(set(a) & set(b)) for a, b in choice)
        union = sum(len(set(a) | set(b)) for a, b in choice)
        total += inter / union
        n += 1
    return total / n


@pytest.mark.parametrize(("ks", "widths"), [([2], [6]), ([3], [5]), ([1], [4]), ([2, 1], [5, 3]), ([1, 2], [4, 4])])
def test_chance_jaccard_is_exact(ks, widths):
    assert overlap.chance_jaccard(ks, widths) == pytest.approx(_brute_chance(ks, widths), rel=1e-12)


def test_jaccard_rows_match_hand_made_tables():
    # layer 0: 6 neurons, layer 1: 4 neurons; reverse removes the highest scores
    a = [np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.0]), np.array([1.0, 2.0, 3.0, 4.0])]
    b = [np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.0]), np.array([4.0, 3.0, 2.0, 1.0])]
    gen = {"m": [x * 0.5 for x in a], "c": [-x for x in b]}
    table = overlap.overlap_table({"m": a, "c": b}, "g", gen, [Level.from_label("50")])
    jac = table.filter((pl.col("analysis") == "jaccard") & (pl.col("model_a") == "m"))
    by_layer = {r["layer"]: r for r in jac.iter_rows(named=True)}
    # 50%: layer 0 k=3, A = {0, 2, 4}, B = {0, 1, 4} -> 2/4; layer 1 k=2, A = {2, 3}, B = {0, 1} -> 0/4
    assert by_layer[0]["k"] == 3 and by_layer[0]["value"] == pytest.approx(2 / 4)
    assert by_layer[1]["k"] == 2 and by_layer[1]["value"] == 0.0
    assert by_layer[None]["value"] == pytest.approx(2 / 8)  # pooled counts, not the mean of layer indices
    assert by_layer[0]["expected_intersection"] == pytest.approx(9 / 6)
    assert by_layer[None]["chance"] == pytest.approx(_brute_chance([3, 2], [6, 4]), rel=1e-12)
    # the generalist's pair: gen@m = a's ranking, gen@c = reversed b's ranking
    g = table.filter((pl.col("analysis") == "jaccard") & (pl.col("model_a") == "g@m") & pl.col("layer").is_null())
    # layer 0: top3 of a = {0,2,4}, top3 of -b = {5,2,3} -> 1/5; layer 1: {2,3} vs {2,3} -> 2/2
    assert g["value"][0] == pytest.approx((1 + 2) / (5 + 2))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = np.empty(len(x))
    for rank, i in enumerate(order):
        r[i] = rank
    return r


def test_spearman_rows_match_ranks_by_hand():
    rng = np.random.default_rng(0)
    spec = [rng.normal(size=7), rng.normal(size=7)]
    gen = [spec[0] * 2 + 1, rng.normal(size=7)]  # layer 0: the same ranking; layer 1: unrelated
    table = overlap.overlap_table({"m": spec, "c": [-s for s in spec]}, "g", {"m": gen, "c": gen}, [Level.from_label("10")])
    rows = {r["layer"]: r["value"] for r in table.filter(
        (pl.col("analysis") == "spearman") & (pl.col("model_a") == "m")).iter_rows(named=True)}  # fmt: skip
    assert rows[0] == pytest.approx(1.0)
    assert rows[1] == pytest.approx(np.corrcoef(_ranks(spec[1]), _ranks(gen[1]))[0, 1])
    pooled = np.corrcoef(_ranks(np.concatenate(spec)), _ranks(np.concatenate(gen)))[0, 1]
    assert rows[None] == pytest.approx(pooled)


def test_cli_writes_the_table_and_rejects_bad_input(tmp_path, capsys):
    from taskprune.cli import main

    def table(path, seed):
        rng = np.random.default_rng(seed)
        pl.DataFrame({"layer": [0] * 20 + [1] * 20, "neuron": list(range(20)) * 2,
                      "score": rng.normal(size=40)}).write_parquet(path)  # fmt: skip
        return str(path)

    args = ["overlap", "--specialist", f"m={table(tmp_path / 'm.parquet', 1)}",
            "--specialist", f"c={table(tmp_path / 'c.parquet', 2)}", "--generalist", "g",
            "--generalist-scores", f"m={table(tmp_path / 'gm.parquet', 3)}",
            "--generalist-scores", f"c={table(tmp_path / 'gc.parquet', 4)}", "--levels", "10", "25"]  # fmt: skip
    out = tmp_path / "overlap.parquet"
    assert main([*args, "--out", str(out)]) == 0
    df = pl.read_parquet(out)
    assert tuple(df.columns) == overlap.COLUMNS
    assert df.filter(pl.col("analysis") == "jaccard").height == 2 * 2 * 3  # 2 pairs x 2 levels x (2 layers + all)
    assert df.filter(pl.col("analysis") == "spearman").height == 2 * 3
    capsys.readouterr()
    pl.DataFrame({"layer": [0, 0], "neuron": [0, 2], "score": [1.0, 2.0]}).write_parquet(tmp_path / "gap.parquet")
    bad = [a if a != f"c={tmp_path / 'c.parquet'}" else f"c={tmp_path / 'gap.parquet'}" for a in args]
    assert main([*bad, "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gap.parquet" in err[0] and not (tmp_path / "x.parquet").exists()


def test_figure_draws_the_table(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from types import SimpleNamespace

    from taskprune.report import figures

    rng = np.random.default_rng(5)
    spec = {"m": [rng.normal(size=10)], "c": [rng.normal(size=10)]}
    table = overlap.overlap_table(spec, "g", {"m": [rng.normal(size=10)], "c": [rng.normal(size=10)]}, [Level.from_label("10"), Level.from_label("30")])
    fig = figures.fig_neuron_overlap(SimpleNamespace(overlap=table))
    left, right = fig.axes[:2]
    assert len(left.lines) == 3  # two pairs and their common chance line
    assert list(left.lines[0].get_ydata()) == pytest.approx(
        table.filter((pl.col("analysis") == "jaccard") & (pl.col("model_a") == "m") & pl.col("layer").is_null())
        .sort("level_pct")["value"].to_list())  # fmt: skip
    assert len(right.patches) == 2 * 2  # two specialists x (1 layer + all)
    empty = figures.fig_neuron_overlap(SimpleNamespace(overlap=None))
    assert "no overlap table" in " ".join(t.get_text() for ax in empty.axes for t in ax.texts)
