"""Structured pruning against independent truths.

- Logits: the pruned checkpoint (loaded by stock transformers, or by load_pruned for per-layer widths) must
  equal the *original* model with the removed neurons zeroed by a forward pre-hook on the MLP output
  projection (the hook sees exactly the neuron activation vector, so this does not reuse pruning code).
- Parameter counts: closed form ``before - sum_l k_l * (params per neuron)`` from the config's shapes.
- Selection: brute-force sorted()/greedy loops in plain Python.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_model
from safetensors import safe_open

from taskprune.cli import main
from taskprune.levels import Level
from taskprune.model.checkpoint import load_pruned
from taskprune.model.pruning import removal_count, select_global, select_uniform, width_floors

D_FF = 80
LAYERS = 2


# ------------------------------------------------------------------------------------------ helpers


def save_base(tmp: Path, arch: str, dtype: torch.dtype | None = None, **save_kw) -> tuple[torch.nn.Module, Path]:
    model = tiny_model(arch)
    if dtype is not None:
        model = model.to(dtype)
    path = tmp / f"base-{arch}"
    model.save_pretrained(path, **save_kw)
    return model, path


def write_scores(path: Path, widths: list[int], seed: int = 0, layer_offset: float = 1.0) -> Path:
    """Random distinct scores; layer l is shifted by l * layer_offset so global allocation is uneven."""
    rng = np.random.default_rng(seed)
    rows = [(layer, j, float(rng.normal()) + layer * layer_offset) for layer, w in enumerate(widths) for j in range(w)]
    pl.DataFrame(rows, schema={"layer": pl.Int64, "neuron": pl.Int64, "score": pl.Float64}, orient="row").write_parquet(path)
    return path


def prune_cli(checkpoint: Path, output: Path, method: str = "selective", level: str = "30", seed: int = 0,
              scores: Path | None = None, options: dict | None = None, extra: list[str] | None = None) -> int:
    argv = ["prune", "--checkpoint", str(checkpoint), "--method", method, "--level", level, "--seed", str(seed),
            "--output", str(output)]
    if scores is not None:
        argv += ["--scores", str(scores)]
    if options is not None:
        argv += ["--options", json.dumps(options)]
    return main(argv + (extra or []))


def out_projections(model: torch.nn.Module, arch: str) -> list[torch.nn.Module]:
    """The MLP output projection of each layer, found by name (independent of taskprune.model.arch)."""
    name = {"gpt2": "c_proj", "gpt_neox": "dense_4h_to_h"}.get(arch, "down_proj")
    return [m for n, m in model.named_modules() if n.endswith(f"mlp.{name}")]


def zeroed_logits(model: torch.nn.Module, arch: str, manifest: pl.DataFrame, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the unpruned model with the manifest's neurons set to 0 at the output projection's input."""
    handles = []
    for layer, module in enumerate(out_projections(model, arch)):
        idx = torch.tensor(manifest.filter(pl.col("layer") == layer)["neuron"].to_list(), dtype=torch.long)

        def zero(_module, inputs, idx=idx):
            x = inputs[0].clone()
            x[..., idx] = 0.0
            return (x,)

        handles.append(module.register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for h in handles:
            h.remove()


def params_per_neuron(arch: str, hidden: int = 32) -> int:
    """Closed form: gated = gate row + up row + down column; GPT-2/NeoX = in row + in bias + out column."""
    return 3 * hidden if arch in ("llama", "qwen2", "mistral", "phi3") else 2 * hidden + 1


def stored_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118
                out[k] = fh.get_tensor(k)
    return out


# ----------------------------------------------------------------------- equivalence, every architecture


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_pruned_logits_equal_zeroed_original(tmp_path: Path, arch: str, allocation: str) -> None:
    from transformers import AutoModelForCausalLM

    from taskprune.model.loading import load_model

    base, base_dir = save_base(tmp_path, arch)
    scores = write_scores(tmp_path / "selectivity.parquet", [D_FF] * LAYERS)
    out = tmp_path / "pruned"
    assert prune_cli(base_dir, out, "selective", "30", scores=scores, options={"pruning": {"allocation": allocation}}) == 0

    record = json.loads((out / "pruning.json").read_text())
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert manifest.schema == {"layer": pl.Int64, "neuron": pl.Int64}
    k_per_layer = [manifest.filter(pl.col("layer") == layer).height for layer in range(LAYERS)]
    assert k_per_layer == record["k_per_layer"]
    assert sum(k_per_layer) == round(0.30 * D_FF * LAYERS)
    if allocation == "uniform":
        assert k_per_layer == [24, 24]
        pruned, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    else:
        assert k_per_layer[0] > k_per_layer[1]  # layer 0's scores are lower: global takes more there
        assert json.loads((out / "config.json").read_text())["taskprune_layer_widths"] == [D_FF - k for k in k_per_layer]
        pruned = load_pruned(out)
    pruned.eval()

    ids = torch.randint(0, 96, (3, 11), generator=torch.Generator().manual_seed(1))
    expected = zeroed_logits(base, arch, manifest, ids)
    with torch.no_grad():
        got = pruned(ids).logits
        unpruned = base(ids).logits
    assert not torch.allclose(unpruned, expected, atol=1e-3)  # the zeroing matters, so equality is informative
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # parameter count: loaded model == closed form == pruning.json
    closed_form = base.num_parameters() - sum(k_per_layer) * params_per_neuron(arch)
    assert pruned.num_parameters() == closed_form
    assert record["parameters_before"] == base.num_parameters()
    assert record["parameters_after"] == closed_form

    # taskprune.model.loading.load_model handles both kinds of checkpoint
    via_loader = load_model(out, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(via_loader(ids).logits, expected, atol=1e-5, rtol=0)


def test_per_layer_widths_survive_save_pretrained(tmp_path: Path) -> None:
    """Recovery saves the merged model with save_pretrained: the result must load again with the same widths."""
    _, base_dir = save_base(tmp_path, "gpt_neox")
    scores = write_scores(tmp_path / "selectivity.parquet", [D_FF] * LAYERS)
    assert prune_cli(base_dir, tmp_path / "p", "reverse", "40", scores=scores,
                     options={"pruning": {"allocation": "global"}}) == 0
    model = load_pruned(tmp_path / "p")
    model.save_pretrained(tmp_path / "again")
    again = load_pruned(tmp_path / "again")
    widths = json.loads((tmp_path / "p" / "config.json").read_text())["taskprune_layer_widths"]
    assert len(set(widths)) == 2
    assert json.loads((tmp_path / "again" / "config.json").read_text())["taskprune_layer_widths"] == widths
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_load_pruned_reads_uniform_checkpoints(tmp_path: Path) -> None:
    base, base_dir = save_base(tmp_path, "qwen2")
    scores = write_scores(tmp_path / "selectivity.parquet", [D_FF] * LAYERS)
    assert prune_cli(base_dir, tmp_path / "p", "reverse", "25", scores=scores) == 0
    model = load_pruned(tmp_path / "p")
    assert [m.weight.shape[1] for m in out_projections(model, "qwen2")] == [60, 60]
    assert json.loads((tmp_path / "p" / "config.json").read_text())["intermediate_size"] == 60


def test_level_zero_gives_original_weights(tmp_path: Path, arch: str) -> None:
    _, base_dir = save_base(tmp_path, arch)
    assert prune_cli(base_dir, tmp_path / "p", "random", "0", seed=33) == 0
    before, after = stored_tensors(base_dir), stored_tensors(tmp_path / "p")
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), key
    assert pl.read_parquet(tmp_path / "p" / "manifest.parquet").height == 0
    cfg_before = json.loads((base_dir / "config.json").read_text())
    cfg_after = json.loads((tmp_path / "p" / "config.json").read_text())
    key = "n_inner" if arch == "gpt2" else "intermediate_size"
    assert cfg_after[key] == cfg_before[key] == D_FF


def test_dtype_tied_embeddings_side_files_and_global_bf16(tmp_path: Path) -> None:
    """GPT-2 ties lm_head to wte: the tie survives, bf16 stays bf16, tokenizer/generation files are copied."""
    from transformers import AutoModelForCausalLM

    _, base_dir = save_base(tmp_path, "gpt2", dtype=torch.bfloat16)
    side = {"tokenizer.json": '{"fake": true}', "tokenizer_config.json": "{}", "special_tokens_map.json": "{}",
            "training.json": '{"params": 1}'}
    for name, text in side.items():
        (base_dir / name).write_text(text)
    for allocation in ("uniform", "global"):
        out = tmp_path / allocation
        assert prune_cli(base_dir, out, "random", "40", seed=42, options={"pruning": {"allocation": allocation}}) == 0
        tensors = stored_tensors(out)
        assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
        assert tensors.keys() == stored_tensors(base_dir).keys()  # lm_head not stored: still tied
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            assert (out / name).read_bytes() == (base_dir / name).read_bytes()
        assert not (out / "training.json").exists()  # describes the unpruned model
        model = AutoModelForCausalLM.from_pretrained(out) if allocation == "uniform" else load_pruned(out)
        assert model.dtype == torch.bfloat16
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_sharded_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base, base_dir = save_base(tmp_path, "llama", max_shard_size="40KB")
    assert (base_dir / "model.safetensors.index.json").is_file()
    assert prune_cli(base_dir, tmp_path / "p", "random", "50", seed=7) == 0
    index = json.loads((tmp_path / "p" / "model.safetensors.index.json").read_text())
    tensors = stored_tensors(tmp_path / "p")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "p", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.num_parameters() == base.num_parameters() - 80 * params_per_neuron("llama")


@pytest.mark.parametrize("arch_name", ["phi3", "gpt2", "gpt_neox"])
def test_numpy_and_torch_backends_write_identical_tensors(tmp_path: Path, arch_name: str) -> None:
    """fp32 checkpoints are pruned with numpy (no torch import); the torch path (bf16) must agree exactly."""
    from types import SimpleNamespace

    from taskprune.model.checkpoint import read_layout
    from taskprune.model.pruning import plan_pruning
    from taskprune.prune import write_pruned_checkpoint

    _, base_dir = save_base(tmp_path, arch_name)
    layout = read_layout(base_dir)
    options = SimpleNamespace(allocation="uniform", multiple_of=1, min_width_fraction=0.1)
    plan = plan_pruning("random", Level.from_label("35"), layout.widths, options, seed=3)
    for framework in ("numpy", "pt"):
        write_pruned_checkpoint(layout, plan, tmp_path / framework, {}, framework=framework)
    a, b = stored_tensors(tmp_path / "numpy"), stored_tensors(tmp_path / "pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "numpy" / "model.safetensors").read_bytes() == (tmp_path / "pt" / "model.safetensors").read_bytes()


def test_summary_copy_outside_checkpoint(tmp_path: Path) -> None:
    _, base_dir = save_base(tmp_path, "llama")
    summary = tmp_path / "records" / "p.json"
    assert prune_cli(base_dir, tmp_path / "p", "random", "10", seed=33, extra=["--summary", str(summary)]) == 0
    assert json.loads(summary.read_text()) == json.loads((tmp_path / "p" / "pruning.json").read_text())


# -------------------------------------------------------------------------------- selection rules


def test_removal_count_matches_round_and_paper_levels() -> None:
    for width in (7, 80, 768, 8960):
        for level in ("0", "1", "5.71", "10", "15.71", "33.3", "99"):
            assert removal_count(Level.from_label(level), width) == round(float(level) / 100 * width)
    # paper: 1.5B d_ff 8960, 7B d_ff 18944 -> the levels were chosen to give multiples of 64
    k15 = [removal_count(Level.from_label(x), 8960) for x in ("5.71", "10", "15.71", "20", "25.71", "30", "35.71")]
    k7 = [removal_count(Level.from_label(x), 18944) for x in ("5.405", "10.135", "15.54", "20.27", "25", "30.405", "35.135")]
    assert k15 == [512, 896, 1408, 1792, 2304, 2688, 3200]
    assert k7 == [1024, 1920, 2944, 3840, 4736, 5760, 6656]
    assert removal_count(Level.from_label("12.5"), 4) == 1  # exact half rounds up (not to even)
    assert removal_count(Level.from_label("10"), 100, multiple_of=4) == 12  # 10 / 4 = 2.5 -> 3 blocks
    assert removal_count(Level.from_label("9"), 100, multiple_of=4) == 8


def brute_force_lowest(scores: list[float], k: int) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda j: (scores[j], j))[:k])


def test_selective_and_reverse_match_brute_force_and_are_disjoint() -> None:
    rng = np.random.default_rng(3)
    width = 80
    scores = [np.round(rng.normal(size=width), 1) for _ in range(2)]  # rounding makes ties
    for k in range(0, width // 2 + 1):
        sel = select_uniform("selective", [width] * 2, [k, k], scores)
        rev = select_uniform("reverse", [width] * 2, [k, k], scores)
        for layer in range(2):
            s = scores[layer].tolist()
            assert set(sel[layer].tolist()) == brute_force_lowest(s, k)
            # reverse removes the k highest: every kept score <= every removed score
            kept = set(range(width)) - set(rev[layer].tolist())
            if k:
                assert max(s[j] for j in kept) <= min(s[j] for j in rev[layer].tolist())
            assert not set(sel[layer].tolist()) & set(rev[layer].tolist())
    # ties break by neuron index: equal scores -> selective takes the first, reverse the last neurons
    flat = [np.zeros(10)]
    assert select_uniform("selective", [10], [3], flat)[0].tolist() == [0, 1, 2]
    assert select_uniform("reverse", [10], [3], flat)[0].tolist() == [7, 8, 9]


def test_random_is_reproducible_seeded_and_nested() -> None:
    widths = [80, 80, 64]
    a = select_uniform("random", widths, [20, 20, 16], seed=33)
    b = select_uniform("random", widths, [20, 20, 16], seed=33)
    c = select_uniform("random", widths, [20, 20, 16], seed=42)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[0], a[1])  # layers draw independently
    bigger = select_uniform("random", widths, [40, 40, 32], seed=33)
    assert all(set(x.tolist()) <= set(y.tolist()) for x, y in zip(a, bigger, strict=True))


def test_random_cli_seeds(tmp_path: Path) -> None:
    _, base_dir = save_base(tmp_path, "llama")
    for name, seed in (("a", 33), ("b", 33), ("c", 42)):
        assert prune_cli(base_dir, tmp_path / name, "random", "15.71", seed=seed) == 0
    manifests = {n: pl.read_parquet(tmp_path / n / "manifest.parquet") for n in "abc"}
    assert manifests["a"].equals(manifests["b"])
    assert not manifests["a"].equals(manifests["c"])
    assert manifests["a"].height == 2 * round(0.1571 * D_FF)


def brute_force_global(direction: str, widths: list[int], k_total: int, floors: list[int],
                       scores: list[list[float]] | None, seed: int) -> list[set[int]]:
    """Greedy in plain Python: walk the global ranking, take a neuron while its layer stays above its floor."""
    cands = [(layer, j) for layer, w in enumerate(widths) for j in range(w)]
    if direction == "random":
        order = [cands[i] for i in np.random.default_rng(seed).permutation(len(cands))]
    else:
        order = sorted(cands, key=lambda c: (scores[c[0]][c[1]], c[0], c[1]))
        if direction == "reverse":
            order = order[::-1]
    removed: list[set[int]] = [set() for _ in widths]
    taken = 0
    for layer, j in order:
        if taken == k_total:
            break
        if len(removed[layer]) < widths[layer] - floors[layer]:
            removed[layer].add(j)
            taken += 1
    return removed


@pytest.mark.parametrize("direction", ["selective", "reverse", "random"])
def test_global_allocation_matches_brute_force_greedy(direction: str) -> None:
    rng = random.Random(5)
    widths = [12, 20, 16]
    scores = [[round(rng.gauss(layer, 1), 1) for _ in range(w)] for layer, w in enumerate(widths)]
    floors = width_floors(widths, 0.25)
    assert floors == [3, 5, 4]
    for k_total in (0, 5, 17, 30, sum(widths) - sum(floors)):
        got = select_global(direction, widths, k_total, floors, [np.array(s) for s in scores], seed=9)
        want = brute_force_global(direction, widths, k_total, floors, scores, seed=9)
        assert [set(g.tolist()) for g in got] == want
        assert all(w - g.size >= f for w, g, f in zip(widths, got, floors, strict=True))


def test_global_multiple_of_rounds_each_layer() -> None:
    widths = [64, 64]
    scores = [np.linspace(0, 1, 64), np.linspace(0.5, 1.5, 64)]
    removed = select_global("selective", widths, 40, width_floors(widths, 0.1), scores, multiple_of=8)
    assert all(r.size % 8 == 0 for r in removed)
    assert abs(sum(r.size for r in removed) - 40) <= 8


def test_global_floor_keeps_every_mlp_alive(tmp_path: Path) -> None:
    """At 80% with layer 1 scored far below layer 0, layer 1 stops at its 10% floor (8 of 80 neurons)."""
    _, base_dir = save_base(tmp_path, "mistral")
    scores = write_scores(tmp_path / "selectivity.parquet", [D_FF] * LAYERS, layer_offset=-100.0)
    opts = {"pruning": {"allocation": "global", "min_width_fraction": 0.1}}
    assert prune_cli(base_dir, tmp_path / "p", "selective", "80", scores=scores, options=opts) == 0
    record = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert record["d_ff_after"][1] == math.ceil(0.1 * D_FF)
    assert sum(record["k_per_layer"]) == round(0.8 * 2 * D_FF)


# ------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def bad_input_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    _, base_dir = save_base(tmp, "llama")
    _, sharded = save_base(tmp, "gpt2", max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    good = write_scores(tmp / "selectivity.parquet", [D_FF] * LAYERS)
    (tmp / "nan").mkdir()
    df = pl.read_parquet(good).with_columns(
        pl.when(pl.col("neuron") == 3).then(float("nan")).otherwise(pl.col("score")).alias("score"))
    nan_scores = tmp / "nan" / "selectivity.parquet"
    df.write_parquet(nan_scores)
    (tmp / "other").mkdir()
    other = write_scores(tmp / "other" / "selectivity.parquet", [64] * 3)  # another model's shape
    (tmp / "dup").mkdir()
    dup = tmp / "dup" / "selectivity.parquet"
    pl.read_parquet(good).with_columns(pl.col("neuron") // 2).write_parquet(dup)  # right row count, wrong keys
    return {"base": base_dir, "sharded": sharded, "good": good, "nan": nan_scores, "other": other, "dup": dup,
            "tmp": tmp}


BAD_CASES = {
    "level 100": dict(level="100"),
    "level negative": dict(level="-1"),
    "level not a number": dict(level="abc"),
    "level nan": dict(level="nan"),
    "unknown method": dict(method="selectiv"),
    "unknown score": dict(method="selective-bogus"),
    "scores of another model": dict(scores="other"),
    "duplicated neurons": dict(scores="dup"),
    "nan scores": dict(scores="nan"),
    "missing shard": dict(checkpoint="sharded", method="random", seed=33, scores=None),
    "missing checkpoint": dict(checkpoint="nowhere"),
    "missing score file": dict(scores="absent"),
    "no scores for selective": dict(scores=None),
    "wrong score table for method": dict(method="selective-taker"),
    "seed for deterministic method": dict(seed=5),
    "random without seed": dict(method="random", seed=0, scores=None),
    "bad options": dict(options={"pruning": {"allocation": "everywhere"}}),
    "floor impossible": dict(level="95", options={"pruning": {"allocation": "global", "min_width_fraction": 0.5}}),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_line_error_and_nothing_written(bad_input_setup: dict[str, Path], case: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"checkpoint": "base", "method": "selective", "level": "10", "seed": 0, "scores": "good", "options": None}
    spec.update(BAD_CASES[case])
    tmp = bad_input_setup["tmp"]
    paths = {**bad_input_setup, "nowhere": tmp / "nowhere", "absent": tmp / "absent.parquet"}
    out_root = tmp / f"out-{case.replace(' ', '_')}"
    out = out_root / "tiny" / "selective" / "10" / "0"
    capsys.readouterr()
    rc = prune_cli(
        paths[spec["checkpoint"]], out, spec["method"], spec["level"], spec["seed"],
        scores=paths[spec["scores"]] if spec["scores"] else None, options=spec["options"],
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("taskprune prune: error:"), err
    assert not out_root.exists()


def test_help() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--help"])
    assert exc.value.code == 0
