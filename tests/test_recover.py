"""Recovery: LoRA training, merge and checkpoint writing on tiny random models (no downloads)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from taskprune.config import RecoveryConfig, RecoveryTaskConfig  # noqa: E402
from taskprune.errors import DataError  # noqa: E402
from taskprune.recipes import RECIPES  # noqa: E402
from taskprune.recover import (  # noqa: E402
    planned_steps,
    save_recovered,
    task_hyperparameters,
)
from taskprune.recovery import losses  # noqa: E402
from taskprune.recovery.data import (  # noqa: E402
    MIN_SUBSTRING_CHARS,
    TrainingExample,
    batch_order,
    build_examples,
    check_no_eval_leak,
    collate,
    split_microbatches,
)
from taskprune.recovery.lora import add_lora, completion_loss, count_parameters, merge_lora, train_lora  # noqa: E402
from taskprune.recovery.losses import StepContext, recipe_loss  # noqa: E402

VOCAB = 96  # tiny_config's default vocabulary size
PAD, BOS, EOS = 0, 1, 2


# ------------------------------------------------------------------------------------------ helpers


def _problems(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of a tiny arithmetic task, each prompt longer than MIN_SUBSTRING_CHARS."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        rows.append((f"Question: what is {a} plus {b}?\nAnswer:", f" so the answer is {a + b} ."))
    return rows


def _tokenizer(save_dir: Path | None = None):
    """A small BPE PreTrainedTokenizerFast (<= VOCAB tokens, BOS added to every text) trained in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator([p + c for p, c in _problems(300, 0)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (PAD, BOS, EOS)
    assert len(fast) <= VOCAB
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


def _random_examples(n: int, seed: int, length: tuple[int, int] = (6, 14)) -> list[TrainingExample]:
    g = random.Random(seed)
    out = []
    for _ in range(n):
        ids = tuple(g.randrange(4, VOCAB) for _ in range(g.randint(*length)))
        out.append(TrainingExample(ids, n_prompt=g.randint(1, len(ids) - 2)))
    return out


def _recovery(**kw) -> RecoveryConfig:
    base = dict(r=4, alpha=8, dropout=0.05, batch_size=4, seq_len=48, seed=3)
    base.update(kw)
    return RecoveryConfig(**base)


def _train(model, examples, *, seed: int, steps: int = 4, lr: float = 1e-2, recovery: RecoveryConfig | None = None):
    peft_model = add_lora(model, recovery or _recovery(), seed)
    log = train_lora(peft_model, examples, pad_id=PAD, batch_size=4, steps=steps, learning_rate=lr, seed=seed,
                     progress=False)
    return peft_model, log


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _narrow_mlps(model, widths: list[int]) -> None:
    """Keep the first ``widths[l]`` neurons of layer ``l`` (rows of gate/up, columns of down), in place."""
    for layer, width in zip(model.model.layers, widths, strict=True):
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, width, bias=old.bias is not None)
            new.weight.data = old.weight.data[:width].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(width, old.out_features, bias=old.bias is not None)
        new.weight.data = old.weight.data[:, :width].clone()
        mlp.down_proj = new
    model.config.taskprune_layer_widths = list(widths)


# ------------------------------------------------------------------------------- hyper-parameters


def test_per_task_falls_back_to_default_key_by_key():
    rec = RecoveryConfig(
        default=RecoveryTaskConfig(learning_rate=1e-3, epochs=2, max_steps=40),
        per_task={"code": {"learning_rate": 5e-4, "max_samples": 100}},
    )
    code = task_hyperparameters(rec, "code")
    assert (code.learning_rate, code.epochs, code.max_samples, code.max_steps) == (5e-4, 2, 100, 40)
    assert task_hyperparameters(rec, "math") == rec.default
    assert planned_steps(10, 4, RecoveryTaskConfig(epochs=3)) == 8  # ceil(30 / 4)
    assert planned_steps(10, 4, RecoveryTaskConfig(epochs=3, max_steps=5)) == 5


# ------------------------------------------------------------------------------------ the data


def test_examples_mask_everything_but_the_completion():
    tok = _tokenizer()
    rows = _problems(6, 1)
    examples, counts = build_examples(tok, [p for p, _ in rows], [c for _, c in rows], seq_len=64)
    assert counts == {"n_rows": 6, "n_examples": 6, "n_truncated": 0, "n_dropped": 0}
    for (prompt, completion), ex in zip(rows, examples, strict=True):
        prompt_ids = tok(prompt)["input_ids"]  # how generation sees the prompt: BOS + prompt
        assert prompt_ids[0] == BOS
        assert list(ex.input_ids) == prompt_ids + tok(completion, add_special_tokens=False)["input_ids"] + [EOS]
        assert ex.n_prompt == len(prompt_ids)
    batch = collate(examples, PAD)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        assert batch["input_ids"][i, :n].tolist() == list(ex.input_ids)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        expected = [-100] * ex.n_prompt + list(ex.input_ids[ex.n_prompt:])
        expected += [-100] * (batch["input_ids"].shape[1] - n)
        assert batch["labels"][i].tolist() == expected
    # too short a seq_len truncates the completion, or drops a row whose prompt alone fills it
    n_prompt = len(tok(rows[0][0])["input_ids"])
    short, counts = build_examples(tok, [rows[0][0]], [rows[0][1]], seq_len=n_prompt + 1)
    assert counts["n_truncated"] == 1 and len(short[0].input_ids) == n_prompt + 1
    _, counts = build_examples(tok, [rows[0][0]], [rows[0][1]], seq_len=n_prompt)
    assert counts["n_dropped"] == 1 and counts["n_examples"] == 0


def test_chat_template_prompts_end_with_the_generation_prompt():
    tok = _tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (example,), _ = build_examples(tok, ["what is 3 plus 4?"], [" 7"], seq_len=64, chat_template=True)
    rendered = "<s>user: what is 3 plus 4?\nassistant:"
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + tok(" 7", add_special_tokens=False)["input_ids"] + [EOS]
    assert example.n_prompt == len(prompt_ids) and prompt_ids.count(BOS) == 1


def test_batch_order_covers_each_epoch_once():
    batches = batch_order(n_examples=10, batch_size=4, steps=5, seed=0)  # 20 draws = 2 epochs
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert batches == batch_order(10, 4, 5, seed=0) and batches != batch_order(10, 4, 5, seed=1)


def test_leak_guard():
    train = _problems(20, 1)
    prompts = [p for p, _ in train]
    texts = [p + c for p, c in train]
    clean_eval = ["Question: what is 100 plus 200?\nAnswer:"]
    check_no_eval_leak(texts, prompts, clean_eval)  # no error
    # the same prompt with different whitespace is the same item
    with pytest.raises(DataError, match="1 evaluation prompt"):
        check_no_eval_leak(texts, prompts, ["  " + prompts[3].replace(" ", "   ") + "\n"])
    # an eval prompt inside a longer training text
    wrapped = ["Here is one: " + prompts[5] + " 99"]
    with pytest.raises(DataError):
        check_no_eval_leak(wrapped, wrapped, [prompts[5]])
    # a short prompt is matched exactly only, never as a substring
    assert len("plus") < MIN_SUBSTRING_CHARS
    check_no_eval_leak(texts, prompts, ["plus"])


# ------------------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("arch_name", ["llama", "qwen2"])
def test_merged_logits_equal_adapter_logits(arch_name):
    model = tiny_model(arch_name)
    n_params = count_parameters(model)
    peft_model, _ = _train(model, _random_examples(12, 0), seed=0, steps=4)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b), "training must move the adapters"
    ids = torch.randint(4, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    peft_model.eval()
    with_adapters = _logits(peft_model, ids)
    with peft_model.disable_adapter():
        assert not torch.allclose(_logits(peft_model, ids), with_adapters, atol=1e-4)
    merged = merge_lora(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), with_adapters, atol=1e-5, rtol=1e-5)
    assert count_parameters(merged) == n_params


def test_per_layer_widths_survive_training_merge_and_save(tmp_path):
    from taskprune.model.checkpoint import layer_widths

    model = tiny_model("llama")
    widths = [48, 64]
    _narrow_mlps(model, widths)
    n_params = count_parameters(model)
    ids = torch.randint(4, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    src = tmp_path / "pruned"
    model.save_pretrained(src)
    _tokenizer(src)
    peft_model, _ = _train(model, _random_examples(8, 1), seed=1, steps=3)
    peft_model.eval()
    expected = _logits(peft_model, ids)
    merged = merge_lora(peft_model)
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=1e-5)
    assert layer_widths(merged) == widths and count_parameters(merged) == n_params

    out = tmp_path / "recovered"
    save_recovered(merged, src, out, {"note": "test"})
    config = json.loads((out / "config.json").read_text())
    assert config["taskprune_layer_widths"] == widths
    assert config["intermediate_size"] == json.loads((src / "config.json").read_text())["intermediate_size"]
    from safetensors.torch import load_file

    tensors = load_file(out / "model.safetensors")
    for layer, width in enumerate(widths):
        assert tuple(tensors[f"model.layers.{layer}.mlp.down_proj.weight"].shape) == (32, width)
        torch.testing.assert_close(
            tensors[f"model.layers.{layer}.mlp.up_proj.weight"], merged.model.layers[layer].mlp.up_proj.weight
        )
    assert (out / "tokenizer.json").is_file() and json.loads((out / "recovery.json").read_text())["note"] == "test"
    try:  # the per-layer-width loader; check the round trip once it exists
        from taskprune.model.checkpoint import load_pruned  # noqa: F401
    except ImportError:
        pytest.skip("taskprune.model.checkpoint.load_pruned not available yet: round trip not checked")
    from taskprune.model.loading import load_model

    reloaded = load_model(out, "cpu")
    torch.testing.assert_close(_logits(reloaded, ids), expected, atol=1e-5, rtol=1e-5)


def test_training_lowers_the_completion_loss():
    tok = _tokenizer()
    rows = _problems(16, 2)
    examples, _ = build_examples(tok, [p for p, _ in rows], [c for _, c in rows], seq_len=48)
    model = tiny_model("llama")
    before = completion_loss(model, examples, PAD)
    peft_model, log = _train(model, examples, seed=0, steps=40, lr=2e-2)
    summary = log.summary()
    assert summary["steps"] == 40 and summary["mean_last_10pct"] < summary["mean_first_10pct"] - 0.2
    after = completion_loss(merge_lora(peft_model), examples, PAD)  # measured independently of the log
    # A random tiny model with tied std-0.02 embeddings cannot emit logits much above 0.6, so its loss
    # floor is near 4 nats (ln 96 = 4.56 at the start): a 0.25-nat drop is most of what LoRA can reach.
    assert after < before - 0.25, (before, after)


def test_microbatches_accumulate_the_whole_batch_gradient():
    examples = _random_examples(12, 4, length=(5, 16))
    micro = split_microbatches(examples[:4], max_tokens=20)
    assert len(micro) > 1 and sorted(e.input_ids for m in micro for e in m) == sorted(e.input_ids for e in examples[:4])
    assert all(len(m) == 1 or len(m) * max(len(e.input_ids) for e in m) <= 20 for m in micro)

    def trained(max_tokens: int | None) -> tuple[list[float], dict]:
        peft_model = add_lora(tiny_model("llama"), _recovery(dropout=0.0), seed=0)
        log = train_lora(peft_model, examples, pad_id=PAD, batch_size=4, steps=3, learning_rate=1e-2, seed=0,
                         microbatch_tokens=max_tokens, progress=False)
        return log.losses, merge_lora(peft_model).state_dict()

    whole_losses, whole = trained(None)
    split_losses, split = trained(20)
    assert whole_losses == pytest.approx(split_losses, rel=1e-5)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-5)
    # the loss is the batch's mean completion-token cross-entropy: check step 1 by hand, before any update
    model = tiny_model("llama")
    first = [examples[i] for i in batch_order(len(examples), 4, 1, seed=0)[0]]
    batch = collate(first, PAD)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert whole_losses[0] == pytest.approx(float(by_hand), rel=1e-5)


def test_same_seed_gives_the_same_weights():
    examples = _random_examples(10, 3)

    def trained(seed: int) -> dict:
        peft_model, _ = _train(tiny_model("qwen2"), examples, seed=seed, steps=3)
        return {k: v.clone() for k, v in merge_lora(peft_model).state_dict().items()}

    first, again, other = trained(5), trained(5), trained(6)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# -------------------------------------------------------------------------------------- recipes


def _kl_by_hand(student_logits, teacher_logits, labels, temperature: float) -> tuple[float, float, int]:
    """(sum over completion positions of KL(p_t^T || p_s^T), sum of CE, count), in float64 Python loops."""
    kl_total, ce_total, count = 0.0, 0.0, 0
    s_rows, t_rows, lab = student_logits.double().tolist(), teacher_logits.double().tolist(), labels.tolist()
    for b in range(len(lab)):
        for t in range(len(lab[b]) - 1):
            target = lab[b][t + 1]
            if target == -100:
                continue
            zs = [z / temperature for z in s_rows[b][t]]
            zt = [z / temperature for z in t_rows[b][t]]
            ms, mt = max(zs), max(zt)
            log_norm_s = ms + math.log(sum(math.exp(z - ms) for z in zs))
            log_norm_t = mt + math.log(sum(math.exp(z - mt) for z in zt))
            kl_total += sum(math.exp(a - log_norm_t) * ((a - log_norm_t) - (c - log_norm_s)) for a, c in zip(zt, zs, strict=True))
            raw = s_rows[b][t]
            m = max(raw)
            ce_total += m + math.log(sum(math.exp(z - m) for z in raw)) - raw[target]
            count += 1
    return kl_total, ce_total, count


@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_kd_loss_equals_a_hand_computed_kl(ce_weight):
    from taskprune.config import DistillationConfig

    student, teacher = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    _narrow_mlps(student, [40, 56])  # a pruned student, an unpruned teacher: same vocabulary
    batch = collate(_random_examples(3, 7), PAD)
    kd = DistillationConfig(temperature=1.7, ce_weight=ce_weight)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        loss = recipe_loss(RECIPES["lora-kd"])(student, batch, StepContext(n_targets, teacher, kd))
        s_logits, t_logits = _logits(student, batch["input_ids"]), _logits(teacher, batch["input_ids"])
    kl, ce, count = _kl_by_hand(s_logits, t_logits, batch["labels"], kd.temperature)
    assert count == n_targets and kl > 0.01
    expected = ((1 - ce_weight) * kd.temperature**2 * kl + ce_weight * ce) / n_targets
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_teacher_equal_to_the_student_gives_zero_kd_loss_and_no_update():
    from taskprune.config import DistillationConfig

    teacher = tiny_model("qwen2", seed=2)
    student = add_lora(tiny_model("qwen2", seed=2), _recovery(dropout=0.0), seed=0)  # B = 0: the identity
    batch = collate(_random_examples(4, 8), PAD)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())

    def loss_and_gradient(teacher_model) -> tuple[float, float]:
        student.zero_grad(set_to_none=True)
        loss = recipe_loss(RECIPES["lora-kd"])(student, batch, StepContext(n_targets, teacher_model, DistillationConfig()))
        loss.backward()
        grads = [p.grad.abs().max() for n, p in student.named_parameters() if "lora_" in n and p.grad is not None]
        return float(loss.detach()), float(max(grads))

    loss, gradient = loss_and_gradient(teacher)
    assert abs(loss) < 1e-6 and gradient < 1e-6
    # and a different teacher does not give zero (the check can fail)
    other_loss, other_gradient = loss_and_gradient(tiny_model("qwen2", seed=3))
    assert other_loss > 1e-3 and other_gradient > 1e-4
    log = train_lora(student, _random_examples(8, 9), pad_id=PAD, batch_size=4, steps=1, learning_rate=1e-2,
                     seed=0, progress=False, recipe="lora-kd", teacher=teacher, distillation=DistillationConfig())
    assert abs(log.losses[0]) < 1e-6


def _seen_by_the_student(recipe: str, seed: int) -> tuple[list[tuple[int, ...]], object]:
    """Every token row the student's embedding layer receives while training with ``recipe`` (recorded
    by a forward hook, independently of the training log), and the log."""
    from taskprune.config import DistillationConfig

    student = add_lora(tiny_model("llama", seed=0), _recovery(dropout=0.0), seed=0)
    seen: list[tuple[int, ...]] = []
    student.get_input_embeddings().register_forward_pre_hook(
        lambda _module, args: seen.extend(tuple(r) for r in args[0].tolist())
    )
    log = train_lora(student, _random_examples(10, 5), pad_id=PAD, batch_size=4, steps=4, learning_rate=1e-2,
                     seed=seed, progress=False, recipe=recipe, teacher=tiny_model("llama", seed=1),
                     distillation=DistillationConfig(ce_weight=0.5))
    return seen, log


def test_matched_budget_recipes_see_identical_example_sequences():
    lora_seen, lora_log = _seen_by_the_student("lora", seed=4)
    kd_seen, kd_log = _seen_by_the_student("lora-kd", seed=4)
    assert len(lora_seen) == 4 * 4 and lora_seen == kd_seen
    assert lora_log.batches == kd_log.batches and lora_log.sequence_sha256 == kd_log.sequence_sha256
    assert len(lora_log.losses) == len(kd_log.losses) == 4
    assert lora_log.completion_tokens == kd_log.completion_tokens and lora_log.total_tokens == kd_log.total_tokens
    other_seen, other_log = _seen_by_the_student("lora", seed=5)
    assert other_seen != lora_seen and other_log.sequence_sha256 != lora_log.sequence_sha256


def test_a_distillation_recipe_without_a_teacher_is_refused():
    from taskprune.errors import ModelError

    student = add_lora(tiny_model("llama"), _recovery(), seed=0)
    with pytest.raises(ModelError, match="teacher"):
        train_lora(student, _random_examples(4, 1), pad_id=PAD, batch_size=4, steps=1, learning_rate=1e-2,
                   seed=0, progress=False, recipe="lora-kd")


def test_unknown_recipe_in_the_config_names_the_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="recovery.methods: unknown recovery recipe 'lora-dk'.*lora-kd"):
        RecoveryConfig(methods=["lora", "lora-dk"])
    with pytest.raises(ValidationError, match="not in recovery.methods"):
        RecoveryConfig(methods=["lora"], variants=[{"method": "selective", "recipes": ["lora-kd"]}])


def test_recovered_variants_carry_their_recipe():
    from taskprune.grid import Variant, parse_variant
    from taskprune.levels import Level

    v = Variant("m", "selective", Level.from_label("10"), 0, "recovered", "lora-kd")
    assert v.path == "m/selective/10/0/recovered-lora-kd"
    assert v.checkpoint == "results/recovered/m/selective/10/0/lora-kd"
    assert parse_variant(v.path) == v and parse_variant("m/selective/10/0") == v.pruned
    assert v.pruned.recovered("lora") == parse_variant("m/selective/10/0/recovered-lora")
    for bad in ("m/selective/10/0/recovered", "m/selective/10/0/lora"):
        with pytest.raises(ValueError):
            parse_variant(bad)
    with pytest.raises(ValueError):
        Variant("m", "selective", Level.from_label("10"), 0, "recovered")
    from taskprune.evaluate import variant_columns  # the metrics rows of a variant carry its recipe

    assert variant_columns(v)["recovery"] == "lora-kd" and variant_columns(v.pruned)["recovery"] is None


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(params=["uniform", "per-layer"])
def task_files(tmp_path, request):
    """A pruned checkpoint (tiny llama + tokenizer; uniform MLP widths, or per-layer widths read by
    taskprune.model.checkpoint.load_pruned) and train/eval splits of the arithmetic task."""
    import polars as pl

    src = tmp_path / "pruned"
    model = tiny_model("llama")
    if request.param == "per-layer":
        pytest.importorskip("taskprune.model.checkpoint").load_pruned  # noqa: B018 - the loader must exist
        _narrow_mlps(model, [56, 72])
    model.save_pretrained(src)
    _tokenizer(src)
    (src / "pruning.json").write_text('{"level": 10}')
    rows = _problems(40, 4)
    train = pl.DataFrame({"id": [f"t{i}" for i in range(32)], "prompt": [p for p, _ in rows[:32]],
                          "completion": [c for _, c in rows[:32]]})
    eval_rows = [r for r in _problems(60, 5) if r[0] not in set(train["prompt"])][:8]
    evaluation = pl.DataFrame({"id": [f"e{i}" for i in range(8)], "prompt": [p for p, _ in eval_rows],
                               "completion": [c for _, c in eval_rows]})
    train.write_parquet(tmp_path / "train.parquet")
    evaluation.write_parquet(tmp_path / "eval.parquet")
    return tmp_path


def _cli(files: Path, train: str = "train.parquet", extra: tuple[str, ...] = ()) -> int:
    from taskprune.cli import main

    options = {"recovery": {"r": 4, "alpha": 8, "batch_size": 8, "seq_len": 48, "seed": 1,
                            "per_task": {"math": {"learning_rate": 1e-2, "epochs": 2}}}, "device": "cpu"}
    return main(["recover", "--pruned", str(files / "pruned"), "--train", str(files / train),
                 "--eval", str(files / "eval.parquet"), "--task", "math", "--out", str(files / "recovered"),
                 "--options", json.dumps(options), "--no-progress", *extra])


def test_cli_writes_a_loadable_checkpoint(task_files):
    from taskprune.model.loading import load_model, load_tokenizer

    assert _cli(task_files) == 0
    out = task_files / "recovered"
    record = json.loads((out / "recovery.json").read_text())
    assert record["steps"] == 8  # ceil(2 epochs * 32 rows / batch 8)
    assert record["hyperparameters"]["learning_rate"] == 1e-2 and record["seed"] == 1
    assert record["params"]["recovered_total"] == record["params"]["pruned_total"]
    assert record["source_pruning"] == {"level": 10}
    assert not list(task_files.glob(".recovered*")), "no temporary directory is left behind"
    pruned = load_model(task_files / "pruned", "cpu")
    recovered = load_model(out, "cpu")
    assert count_parameters(recovered) == count_parameters(pruned) == record["params"]["pruned_total"]
    changed = [n for n, p in recovered.named_parameters() if not torch.equal(p, pruned.get_parameter(n))]
    assert changed and all(n.endswith("_proj.weight") for n in changed)
    assert load_tokenizer(out).eos_token_id == EOS
    source_config = json.loads((task_files / "pruned" / "config.json").read_text())
    if "taskprune_layer_widths" in source_config:
        widths = source_config["taskprune_layer_widths"]
        assert json.loads((out / "config.json").read_text())["taskprune_layer_widths"] == widths
        assert record["layer_widths"] == widths


def test_cli_lora_kd_matches_the_lora_budget_and_records_its_cost(task_files):
    teacher_dir = task_files / "teacher"
    tiny_model("llama", seed=1).save_pretrained(teacher_dir)
    _tokenizer(teacher_dir)
    assert _cli(task_files) == 0
    lora = json.loads((task_files / "recovered" / "recovery.json").read_text())
    (task_files / "recovered").rename(task_files / "recovered-lora")
    assert _cli(task_files, extra=("--recipe", "lora-kd", "--teacher", str(teacher_dir))) == 0
    kd = json.loads((task_files / "recovered" / "recovery.json").read_text())
    assert (lora["recipe"], kd["recipe"]) == ("lora", "lora-kd") and lora["teacher"] is None
    assert kd["teacher"]["path"] == str(teacher_dir) and kd["teacher"]["dtype"] == "float32"
    assert kd["hyperparameters"]["distillation"]["temperature"] == 2.0
    for key in ("steps", "data"):
        assert kd[key] == lora[key]  # same steps, tokens and example sequence (hash)
    assert kd["peak_memory_bytes"]["process_rss"] > 0 and kd["seconds"]["train"] > 0


def test_cli_refuses_eval_items_in_training_data(task_files, capsys):
    import polars as pl

    train = pl.read_parquet(task_files / "train.parquet")
    leaked = pl.read_parquet(task_files / "eval.parquet").head(1).select(train.columns)
    pl.concat([train, leaked]).write_parquet(task_files / "leaky.parquet")
    assert _cli(task_files, "leaky.parquet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluation prompt" in err and "leaky.parquet" in err
    assert not (task_files / "recovered").exists()


def test_saved_in_the_source_dtype(tmp_path):
    from safetensors.torch import load_file

    from taskprune.recover import checkpoint_dtype

    src = tmp_path / "pruned"
    tiny_model("qwen2").to(torch.bfloat16).save_pretrained(src)
    _tokenizer(src)
    assert checkpoint_dtype(src) == torch.bfloat16
    merged = tiny_model("qwen2")  # as trained on a CPU: fp32
    save_recovered(merged, src, tmp_path / "out", {})
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert checkpoint_dtype(tmp_path / "out") == torch.bfloat16


def test_cli_reports_a_missing_checkpoint_in_one_line(task_files, capsys):
    import shutil

    shutil.rmtree(task_files / "pruned")
    assert _cli(task_files) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model directory not found" in err


def test_every_recipe_names_a_loss_function_of_recover():
    """The registry (importable without torch) names each recipe's loss; recovery.losses must define it."""
    for recipe in RECIPES.values():
        assert callable(getattr(losses, recipe.loss, None)) and losses.recipe_loss(recipe), recipe
