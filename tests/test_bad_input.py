"""Bad input through the command line: one clear line, a non-zero exit, nothing half-written.

Every case below is ONE mutation of an input that works (the positive controls at the top run the very
same commands on the unmutated inputs and succeed), given to the stage's CLI the way Snakemake calls it.
Each error case must:

* exit with status 2 (a :class:`~taskprune.errors.TaskpruneError`), never raise another exception (that
  is a traceback for the user);
* print exactly one ``taskprune <stage>: error: ...`` line, as the last line on stderr, naming the file
  or key and what was expected (the expected fragments are listed per case);
* leave no output: the output path does not exist afterwards and its directory holds no temp files.

Other stderr lines (library progress bars, log records) are allowed before the error line: the contract
is about the error itself. ``--debug`` turns the line into a traceback (checked at the end).

Non-UTF-8 text, decided here: a text input (config YAML, a local JSONL/CSV dataset) that is not UTF-8 is
an error naming the file and saying it is not UTF-8; nothing is guessed or replaced, because a replaced
character silently changes the model's input. In Parquet, string columns are UTF-8 by the format's
definition: invalid bytes in a string column make the file unreadable (one line), and a ``binary``
prompt column is "not text" (one line).

Cases a stage handles without an error (a tokenizer without pad token, prompts longer than
``stats.max_length`` or than the model's context) are checked for the documented handling instead.

Cases whose stage currently fails the contract are marked ``xfail(strict=True)`` with the defect as the
reason, so they turn into failures (XPASS) the moment the stage is fixed and the mark must go.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import tiny_model

from taskprune.cli import main
from taskprune.errors import TaskpruneError
from taskprune.io import read_parquet_metadata

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 96  # tiny_model's vocabulary; the tokenizer below uses ids < 64
D_FF = 80  # tiny_model's MLP width; 2 layers
CONTEXT = 128  # tiny_model's max_position_embeddings / n_positions


# ------------------------------------------------------------------------------------------ inputs


def make_tokenizer(*, eos: bool = True):
    """A word-level tokenizer (``w0`` .. ``w59``), BOS added, never a pad token; optionally no EOS either."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    special = {"bos_token": "<s>", "unk_token": "<unk>"} | ({"eos_token": "</s>"} if eos else {})
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    assert fast.pad_token is None
    return fast


def save_checkpoint(path: Path, model, *, eos: bool = True) -> Path:
    model.save_pretrained(path)
    make_tokenizer(eos=eos).save_pretrained(path)
    return path


def prompts_frame(prompts: list, **extra) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts, **extra})


def stats_frame(widths: list[int], seed: int, n: int = 10) -> pl.DataFrame:
    """A valid statistics table (``taskprune.stats`` contract) with random but consistent values.

    ``w_out_norm`` is a property of the model's weights: two seeds stand for two different models.
    """
    rng = np.random.default_rng(seed)
    rows = sum(widths)
    mean = rng.uniform(0.1, 1.0, rows)
    return pl.DataFrame(
        {
            "layer": np.concatenate([np.full(w, li) for li, w in enumerate(widths)]).astype(np.int64),
            "neuron": np.concatenate([np.arange(w) for w in widths]).astype(np.int64),
            "n": np.full(rows, n, dtype=np.int64),
            "mean": mean,
            "m2": rng.uniform(0.01, 0.5, rows),
            "sq_mean": mean**2 + 0.1,
            "tokens": np.full(rows, 5 * n, dtype=np.int64),
            "w_out_norm": rng.uniform(0.5, 2.0, rows),
        }
    )


def scores_frame(widths: list[int], seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "layer": np.concatenate([np.full(w, li) for li, w in enumerate(widths)]).astype(np.int64),
            "neuron": np.concatenate([np.arange(w) for w in widths]).astype(np.int64),
            "score": rng.normal(size=sum(widths)),
        }
    )


def invalid_utf8_string_parquet(path: Path) -> Path:
    """A Parquet file whose *string* ``prompt`` column holds Latin-1 bytes (a writer that did not validate)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = "café w1 w2".encode("latin-1")
    offsets = pa.py_buffer(np.array([0, len(raw)], dtype=np.int32).tobytes())
    prompt = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(raw)])
    pq.write_table(pa.table({"id": pa.array(["p0"]), "prompt": prompt}), path)
    return path


class Inputs:
    """Checkpoints and files shared by every case of this module (built once, all tiny)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.llama = save_checkpoint(root / "llama", tiny_model("llama", vocab_size=VOCAB))
        self.llama_no_eos = save_checkpoint(root / "llama-no-eos", tiny_model("llama", vocab_size=VOCAB), eos=False)
        self.llama_wide = save_checkpoint(root / "llama-wide", tiny_model("llama", vocab_size=VOCAB, d_ff=96))
        self.gpt2 = save_checkpoint(root / "gpt2", tiny_model("gpt2", vocab_size=VOCAB))

        import transformers as tf

        bert = tf.BertLMHeadModel(tf.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32, is_decoder=True))
        self.bert = save_checkpoint(root / "bert", bert)
        t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=VOCAB, d_model=16, d_ff=32, num_layers=1,
                                                       num_heads=2, d_kv=8))
        self.t5 = save_checkpoint(root / "t5", t5)

        # A checkpoint whose index names a second shard that is not there.
        self.missing_shard = root / "missing-shard"
        shutil.copytree(self.llama, self.missing_shard)
        (self.missing_shard / "model.safetensors").rename(self.missing_shard / "model-00001-of-00002.safetensors")
        weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                      "lm_head.weight": "model-00002-of-00002.safetensors"}
        (self.missing_shard / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
        # A checkpoint whose only weight file was cut in half (an interrupted copy).
        self.truncated_weights = root / "truncated-weights"
        shutil.copytree(self.llama, self.truncated_weights)
        weights = self.truncated_weights / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        # A directory with weights but no config.json.
        self.no_config = root / "no-config"
        shutil.copytree(self.llama, self.no_config)
        (self.no_config / "config.json").unlink()

        self.data = root / "calibration.parquet"
        prompts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]
        prompts_frame(prompts, for_stats=[True, True, True, False]).write_parquet(self.data)

        self.target_stats = root / "stats" / "math.parquet"
        self.distractor_stats = root / "stats" / "conversation.parquet"
        self.target_stats.parent.mkdir()
        target = stats_frame([D_FF, D_FF], seed=1)
        target.write_parquet(self.target_stats)
        # Same model (same weight norms), other prompts.
        target.with_columns(stats_frame([D_FF, D_FF], seed=2).select("mean", "m2", "sq_mean")).write_parquet(
            self.distractor_stats
        )
        self.scores = root / "scores" / "selectivity.parquet"
        self.scores.parent.mkdir()
        scores_frame([D_FF, D_FF]).write_parquet(self.scores)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("bad-input"))


# ------------------------------------------------------------------------------------ command lines


def stats_argv(model: Path, data: Path, out: Path, options: str | None = '{"device":"cpu"}') -> list[str]:
    argv = ["stats", "--model-path", str(model), "--data", str(data), "--out", str(out), "--no-progress"]
    return argv + (["--options", options] if options is not None else [])


def scores_argv(target: Path, distractors: list[Path], out: Path, method: str = "selectivity",
                options: str | None = None) -> list[str]:
    argv = ["scores", "--method", method, "--target", str(target), "--distractors", *map(str, distractors),
            "--out", str(out)]
    return argv + (["--options", options] if options is not None else [])


def prune_argv(checkpoint: Path, out: Path, scores: Path | None, method: str = "selective", level: str = "10",
               seed: int = 0, options: str | None = None) -> list[str]:
    argv = ["prune", "--checkpoint", str(checkpoint), "--method", method, f"--level={level}", "--seed", str(seed),
            "--output", str(out), "--summary", str(out.parent / "summary.json")]
    argv += ["--scores", str(scores)] if scores is not None else []
    return argv + (["--options", options] if options is not None else [])


def write(path: Path, writer: Callable[[Path], object]) -> Path:
    writer(path)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def garbage(dst: Path, size: int = 4096) -> Path:
    dst.write_bytes(b"PAR1" + np.random.default_rng(0).bytes(size) + b"PAR1")
    return dst


def extra_config(tmp: Path, text: bytes) -> list[str]:
    extra = tmp / "extra.yaml"
    extra.write_bytes(text)
    return ["--config", str(ROOT / "config" / "config.yaml"), "--config", str(extra)]


def local_task_options(path: Path, kind: str = "conversation") -> str:
    source = {"source": "local", "path": str(path)}
    return json.dumps({"task": {"kind": kind, "train": source, "calibration": source, "eval": source}})


# ------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """``argv(inputs, tmp, out)`` builds the command (writing any bad file under ``tmp``); ``out`` is the
    output path that must not exist afterwards; ``expect`` are fragments of the error line."""

    name: str
    argv: Callable[[Inputs, Path, Path], list[str]]
    expect: list[str]
    defect: str | None = None  # the stage's current defect (the case is xfail(strict=True))
    # Run as its own process: needed where a library (datasets) logs through a handler bound to the
    # stderr of an earlier test, which an in-process run would misreport as a logging traceback.
    own_process: bool = False


CASES: list[Case] = [
    # ---- options and config keys, through the stage CLIs
    Case("options-unknown-key", lambda i, t, o: stats_argv(i.llama, i.data, o, '{"stats":{"token_budgt":64}}'),
         ["stats.token_budgt", "did you mean 'token_budget'"]),
    Case("options-unknown-section", lambda i, t, o: scores_argv(i.target_stats, [i.distractor_stats], o,
                                                                options='{"score":{"epsilon":1e-6}}'),
         ["unknown section 'score'", "did you mean 'scores'"]),
    Case("options-wrong-type-str-for-int", lambda i, t, o: stats_argv(i.llama, i.data, o,
                                                                      '{"stats":{"max_length":"long"}}'),
         ["stats.max_length", "'long'"]),
    Case("options-wrong-type-float-for-int", lambda i, t, o: prune_argv(
        i.llama, o, i.scores, options='{"pruning":{"multiple_of":1.5}}'), ["pruning.multiple_of", "1.5"]),
    Case("options-negative-epsilon", lambda i, t, o: scores_argv(i.target_stats, [i.distractor_stats], o,
                                                                 options='{"scores":{"epsilon":-1}}'),
         ["scores.epsilon", "-1"]),
    Case("options-not-json", lambda i, t, o: stats_argv(i.llama, i.data, o, '{stats: {}}'),
         ["--options", "not valid JSON"]),
    Case("options-bad-device", lambda i, t, o: stats_argv(i.llama, i.data, o, '{"device":"tpu"}'),
         ["device", "'tpu'", "auto, cpu or cuda"]),
    Case("options-task-kind", lambda i, t, o: ["data", "--task", "math", "--out-dir", str(o),
                                               "--options", '{"task":{"kind":"poetry"}}'],
         ["task.kind", "'poetry'"]),
    Case("config-file-misspelled-key", lambda i, t, o: stats_argv(i.llama, i.data, o, None)
         + extra_config(t, b"stats:\n  max_lenght: 16\n"), ["stats.max_lenght", "did you mean 'max_length'"]),
    Case("config-file-not-utf8", lambda i, t, o: stats_argv(i.llama, i.data, o, None)
         + extra_config(t, "# réglages\nstats:\n  max_length: 16\n".encode("latin-1")), ["extra.yaml", "utf-8"]),
    # ---- pruning levels and methods
    Case("level-100", lambda i, t, o: prune_argv(i.llama, o, i.scores, level="100"),
         ["--level", "outside [0, 100)"]),
    Case("level-negative", lambda i, t, o: prune_argv(i.llama, o, i.scores, level="-5"),
         ["--level", "outside [0, 100)"]),
    Case("level-not-a-number", lambda i, t, o: prune_argv(i.llama, o, i.scores, level="ten"),
         ["--level", "'ten'"]),
    Case("levels-outside-in-options", lambda i, t, o: prune_argv(i.llama, o, i.scores,
                                                                 options='{"pruning":{"levels":[10,100]}}'),
         ["pruning.levels", "outside [0, 100)"]),
    Case("levels-duplicated-in-options", lambda i, t, o: prune_argv(i.llama, o, i.scores,
                                                                    options='{"pruning":{"levels":[10,10.0]}}'),
         ["pruning.levels", "duplicated"]),
    Case("method-misspelled", lambda i, t, o: prune_argv(i.llama, o, i.scores, method="selectve"),
         ["--method", "'selectve'"]),
    Case("random-without-seed", lambda i, t, o: prune_argv(i.llama, o, None, method="random", seed=0),
         ["--seed", "positive seed"]),
    # ---- model directories
    Case("stats-missing-model-dir", lambda i, t, o: stats_argv(t / "no-such-model", i.data, o),
         ["no-such-model", "model directory not found"]),
    Case("prune-missing-model-dir", lambda i, t, o: prune_argv(t / "no-such-model", o, i.scores),
         ["no-such-model", "model directory not found"]),
    Case("stats-no-config-json", lambda i, t, o: stats_argv(i.no_config, i.data, o), ["no-config", "config.json"]),
    Case("stats-bert", lambda i, t, o: stats_argv(i.bert, i.data, o),
         ["'bert'", "supported model types", "gpt2, gpt_neox, llama"]),
    Case("prune-bert", lambda i, t, o: prune_argv(i.bert, o, None, method="random", seed=1),
         ["'bert'", "supported model types", "gpt2, gpt_neox, llama"]),
    Case("stats-t5", lambda i, t, o: stats_argv(i.t5, i.data, o),
         ["'t5'", "supported model types", "gpt2, gpt_neox, llama"]),
    Case("prune-t5", lambda i, t, o: prune_argv(i.t5, o, None, method="random", seed=1),
         ["'t5'", "supported model types", "gpt2, gpt_neox, llama"]),
    Case("stats-missing-shard", lambda i, t, o: stats_argv(i.missing_shard, i.data, o),
         ["missing-shard", "missing weight shard(s) model-00002-of-00002.safetensors"]),
    Case("prune-missing-shard", lambda i, t, o: prune_argv(i.missing_shard, o, None, method="random", seed=1),
         ["missing-shard", "missing weight shard(s) model-00002-of-00002.safetensors"]),
    Case("stats-truncated-weights", lambda i, t, o: stats_argv(i.truncated_weights, i.data, o),
         ["truncated-weights", "model.safetensors"]),
    Case("prune-truncated-weights", lambda i, t, o: prune_argv(i.truncated_weights, o, None, method="random", seed=1),
         ["truncated-weights", "model.safetensors"]),
    # ---- datasets
    Case("stats-empty-dataset", lambda i, t, o: stats_argv(
        i.llama, write(t / "empty.parquet", prompts_frame([]).cast({"prompt": pl.String}).write_parquet), o),
        ["empty.parquet", "no prompts"]),
    Case("stats-no-for-stats-rows", lambda i, t, o: stats_argv(
        i.llama, write(t / "none.parquet", prompts_frame(["w1", "w2"], for_stats=[False, False]).write_parquet), o),
        ["none.parquet", "no prompts with for_stats true"]),
    Case("stats-missing-prompt-column", lambda i, t, o: stats_argv(
        i.llama, write(t / "text.parquet", pl.DataFrame({"id": ["a"], "text": ["w1"]}).write_parquet), o),
        ["text.parquet", "missing column(s) prompt"]),
    Case("stats-null-prompt", lambda i, t, o: stats_argv(
        i.llama, write(t / "null.parquet", prompts_frame(["w1", None]).write_parquet), o),
        ["null.parquet", "'prompt' has 1 missing value"]),
    Case("stats-binary-prompt-not-utf8", lambda i, t, o: stats_argv(
        i.llama, write(t / "binary.parquet", prompts_frame(["café w1".encode("latin-1")]).write_parquet), o),
        ["binary.parquet", "'prompt' must be text"]),
    Case("stats-string-column-invalid-utf8", lambda i, t, o: stats_argv(
        i.llama, invalid_utf8_string_parquet(t / "latin1.parquet"), o),
        ["latin1.parquet", "not a readable Parquet file", "UTF-8"]),
    Case("data-local-jsonl-not-utf8", lambda i, t, o: [
        "data", "--task", "chat", "--out-dir", str(o), "--options", local_task_options(write(
            t / "latin1.jsonl", lambda p: p.write_bytes(b'{"prompt": "caf\xe9?", "completion": "oui"}\n' * 4)))],
        ["latin1.jsonl", "utf-8"], own_process=True),
    Case("data-local-csv-not-utf8", lambda i, t, o: [
        "data", "--task", "chat", "--out-dir", str(o), "--options", local_task_options(write(
            t / "latin1.csv", lambda p: p.write_bytes(b"prompt,completion\ncaf\xe9,oui\nthe,end\n")))],
        ["latin1.csv", "utf-8"], own_process=True),
    Case("stats-corrupted-parquet", lambda i, t, o: stats_argv(i.llama, garbage(t / "garbage.parquet"), o),
         ["garbage.parquet", "not a readable Parquet file"]),
    Case("stats-truncated-parquet", lambda i, t, o: stats_argv(
        i.llama, truncated_copy(i.data, t / "cut.parquet"), o), ["cut.parquet", "not a readable Parquet file"]),
    # ---- statistics (scores input)
    Case("scores-corrupted-stats", lambda i, t, o: scores_argv(garbage(t / "math.parquet"), [i.distractor_stats], o),
         ["math.parquet", "not a readable Parquet file"]),
    Case("scores-truncated-stats", lambda i, t, o: scores_argv(
        i.target_stats, [truncated_copy(i.distractor_stats, t / "qna.parquet", 0.9)], o),
        ["qna.parquet", "not a readable Parquet file"]),
    Case("scores-empty-stats", lambda i, t, o: scores_argv(
        write(t / "math.parquet", stats_frame([D_FF], 1).head(0).write_parquet), [i.distractor_stats], o),
        ["math.parquet", "no rows"]),
    Case("scores-nan-stats", lambda i, t, o: scores_argv(i.target_stats, [write(
        t / "qna.parquet", stats_frame([D_FF, D_FF], 1).with_columns(
            m2=pl.when(pl.col("neuron") == 7).then(float("nan")).otherwise(pl.col("m2"))).write_parquet)], o),
        ["qna.parquet", "2 m2: NaN/inf"]),
    Case("scores-stats-missing-column", lambda i, t, o: scores_argv(i.target_stats, [write(
        t / "qna.parquet", stats_frame([D_FF, D_FF], 1).drop("m2").write_parquet)], o),
        ["qna.parquet", "missing column(s) m2"]),
    Case("scores-stats-other-widths", lambda i, t, o: scores_argv(
        i.target_stats, [write(t / "qna.parquet", stats_frame([96, 96], 1).write_parquet)], o),
        ["qna.parquet", "layer widths [96, 96]", "[80, 80]", "different models"]),
    Case("scores-stats-other-weights", lambda i, t, o: scores_argv(
        i.target_stats, [write(t / "qna.parquet", stats_frame([D_FF, D_FF], 99).write_parquet)], o),
        ["qna.parquet", "different model"]),
    # ---- scores (prune input)
    Case("prune-scores-other-model", lambda i, t, o: prune_argv(i.llama_wide, o, i.scores),
         ["selectivity.parquet", "llama-wide", "another model"]),
    Case("prune-scores-nan", lambda i, t, o: prune_argv(i.llama, o, write(
        t / "selectivity.parquet", scores_frame([D_FF, D_FF]).with_columns(
            score=pl.when(pl.col("neuron") == 5).then(float("nan")).otherwise(pl.col("score"))).write_parquet)),
        ["selectivity.parquet", "NaN, infinite or missing"]),
    Case("prune-scores-inf", lambda i, t, o: prune_argv(i.llama, o, write(
        t / "selectivity.parquet", scores_frame([D_FF, D_FF]).with_columns(
            score=pl.when(pl.col("neuron") == 5).then(float("-inf")).otherwise(pl.col("score"))).write_parquet)),
        ["selectivity.parquet", "NaN, infinite or missing"]),
    Case("prune-scores-corrupted", lambda i, t, o: prune_argv(i.llama, o, garbage(t / "selectivity.parquet")),
         ["selectivity.parquet", "not a readable Parquet file"]),
    Case("prune-scores-truncated", lambda i, t, o: prune_argv(
        i.llama, o, truncated_copy(i.scores, t / "selectivity.parquet", 0.8)),
        ["selectivity.parquet", "not a readable Parquet file"]),
    Case("prune-scores-missing-column", lambda i, t, o: prune_argv(i.llama, o, write(
        t / "selectivity.parquet", scores_frame([D_FF, D_FF]).rename({"score": "value"}).write_parquet)),
        ["selectivity.parquet", "missing column(s) score"]),
    Case("prune-scores-wrong-table", lambda i, t, o: prune_argv(i.llama, o, i.scores, method="selective-wanda"),
         ["--scores", "'wanda' table"]),
    # ---- later stages
    Case("metrics-corrupted-input", lambda i, t, o: ["metrics", "--inputs", str(garbage(t / "metrics.parquet")),
                                                     "--out", str(o)],
         ["metrics.parquet", "not a readable Parquet file"]),
    Case("findings-not-an-items-table", lambda i, t, o: ["findings", "--items", str(i.data), "--out", str(o)],
         ["calibration.parquet", "missing column(s) model"]),
    Case("evaluate-bad-task-spec", lambda i, t, o: ["evaluate", "--variant", "m/base", "--model-path", str(i.llama),
                                                    "--task", "math", "--out-dir", str(o), "--no-progress"],
         ["--task 'math'", "NAME=KIND:PATH"]),
]


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.defect)] if case.defect else []
    return pytest.param(case, id=case.name, marks=marks)


def assert_no_output(out: Path) -> None:
    """Neither the output nor a temp sibling exists (each case writes into its own empty directory)."""
    assert not out.exists(), f"partial output left behind: {out}"
    if out.parent.exists():
        left = sorted(p.name for p in out.parent.iterdir())
        assert not left, f"files left in {out.parent}: {left}"


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The CLI as its own process, as a user (or a Snakemake job without the warm worker) runs it."""
    env = {**os.environ, "TASKPRUNE_WORKER": "0"}
    cmd = [sys.executable, "-m", "taskprune.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def error_line(capsys, argv: list[str], own_process: bool = False) -> str:
    """Run the CLI (in-process unless asked); return its one error line after checking status and format."""
    capsys.readouterr()  # drop output of earlier steps (save_pretrained progress bars)
    if own_process:
        proc = run_cli(argv)
        rc, err = proc.returncode, proc.stderr
    else:
        try:
            rc = main(argv)
        except Exception as exc:  # noqa: BLE001 - any escape is the defect being tested for
            pytest.fail(f"traceback instead of one line: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit status {rc}, stderr: {err[-2000:]}"
    prefix = f"taskprune {argv[0]}: error: "
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one final error line, stderr: {err[-2000:]}"
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gives_one_line_and_no_output(case: Case, inputs: Inputs, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    out = tmp_path / "out" / "result"  # a file or a directory, by stage
    line = error_line(capsys, case.argv(inputs, bad, out), case.own_process)
    for fragment in case.expect:
        # "utf-8" in any spelling (UTF-8, utf8 codec names); every other fragment verbatim
        found = fragment.lower() in line.lower().replace("utf8", "utf-8") if fragment == "utf-8" else fragment in line
        assert found, f"{fragment!r} not in: {line}"
    assert_no_output(out)


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------ positive controls


def test_controls_the_unmutated_inputs_work(inputs: Inputs, tmp_path: Path, capsys) -> None:
    """The same commands on the good inputs succeed, so each case fails because of its one mutation."""
    stats = tmp_path / "stats.parquet"
    assert main(stats_argv(inputs.llama, inputs.data, stats)) == 0, capsys.readouterr().err
    assert read_parquet_metadata(stats)["n_prompts"] == 3  # the for_stats rows
    scores = tmp_path / "scores" / "selectivity.parquet"
    assert main(scores_argv(inputs.target_stats, [inputs.distractor_stats], scores)) == 0, capsys.readouterr().err
    pruned = tmp_path / "pruned"
    assert main(prune_argv(inputs.llama, pruned, inputs.scores)) == 0, capsys.readouterr().err
    assert (pruned / "model.safetensors").is_file() and (tmp_path / "summary.json").is_file()
    assert main(prune_argv(inputs.llama, tmp_path / "random", None, method="random", seed=1)) == 0


# --------------------------------------------------------------------------- handled, not an error


def test_tokenizer_without_pad_token_is_handled(inputs: Inputs, tmp_path: Path, capsys) -> None:
    from transformers import AutoTokenizer

    for model in (inputs.llama, inputs.llama_no_eos):
        tok = AutoTokenizer.from_pretrained(model)
        assert tok.pad_token is None
        out = tmp_path / f"{model.name}.parquet"
        rc = main(stats_argv(model, inputs.data, out))
        assert rc == 0, capsys.readouterr().err
        assert read_parquet_metadata(out)["n_prompts"] == 3


def _long_prompts(tmp_path: Path, n_tokens: int) -> Path:
    words = " ".join(f"w{i % 60}" for i in range(n_tokens - 1))  # + BOS = n_tokens tokens
    return write(tmp_path / "long.parquet", prompts_frame([words, "w1 w2", "w3"]).write_parquet)


def test_prompts_longer_than_max_length_are_truncated_counted_warned(inputs, tmp_path, caplog, capsys) -> None:
    data = _long_prompts(tmp_path, 40)
    out = tmp_path / "stats.parquet"
    with caplog.at_level(logging.WARNING, logger="taskprune.stats"):
        rc = main(stats_argv(inputs.llama, data, out, '{"device":"cpu","stats":{"max_length":16}}'))
    assert rc == 0, capsys.readouterr().err
    meta = read_parquet_metadata(out)
    assert meta["n_truncated"] == 1 and meta["tokens"] == 16 + 3 + 2
    assert "1 of 3 prompts" in caplog.text and "truncated" in caplog.text


def test_prompts_longer_than_the_model_context_are_truncated_counted_warned(inputs, tmp_path, caplog, capsys):
    data = _long_prompts(tmp_path, CONTEXT + 72)
    out = tmp_path / "stats.parquet"
    with caplog.at_level(logging.WARNING, logger="taskprune.stats"):
        rc = main(stats_argv(inputs.llama, data, out))  # default stats.max_length 512 > context 128
    assert rc == 0, capsys.readouterr().err
    meta = read_parquet_metadata(out)
    assert meta["n_truncated"] == 1 and meta["tokens"] <= CONTEXT + 3 + 2, meta
    assert "truncated" in caplog.text


def test_prompts_longer_than_gpt2_positions_are_truncated_not_a_crash(inputs, tmp_path, caplog, capsys):
    data = _long_prompts(tmp_path, CONTEXT + 72)
    out = tmp_path / "stats.parquet"
    try:
        rc = main(stats_argv(inputs.gpt2, data, out))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"traceback: {type(exc).__name__}: {exc}")
    assert rc == 0, capsys.readouterr().err
    assert read_parquet_metadata(out)["n_truncated"] == 1


# ------------------------------------------------------------------------------ --debug and processes


def test_debug_shows_the_exception_instead(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(TaskpruneError, match="outside"):
        main([*prune_argv(inputs.llama, tmp_path / "out", inputs.scores, level="100"), "--debug"])


def test_real_process_one_line_exit_2_and_traceback_only_with_debug(inputs: Inputs, tmp_path: Path) -> None:
    """The console entry point as a user runs it (its own process, logging to stderr)."""
    out = tmp_path / "out" / "pruned"
    argv = prune_argv(inputs.llama, out, inputs.scores, level="100")
    proc = run_cli(argv)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["taskprune prune: error: --level: 100 is outside [0, 100)"]
    assert proc.stdout == ""
    debug = run_cli([*argv, "--debug"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    assert_no_output(out)


# ------------------------------------------------------------------------- model-written code vs results/

#: Every way a program could change the results tree by absolute path; each attempt is caught so the
#: program runs to the end (and passes), proving it really executed every attempt.
TAMPER = '''
import os, shutil
results = {results!r}
files = {files!r}
attempts = []
def attempt(name, fn):
    try:
        fn()
        attempts.append(name)
    except BaseException:
        pass
def overwrite(p):
    with open(p, "w") as fh:
        fh.write("tampered")
def append(p):
    with open(p, "ab") as fh:
        fh.write(b"tampered")
for p in files:
    attempt("overwrite " + p, lambda: overwrite(p))
    attempt("append " + p, lambda: append(p))
    attempt("truncate " + p, lambda: os.truncate(p, 0))
    attempt("chmod " + p, lambda: os.chmod(p, 0o777))
    attempt("rename " + p, lambda: os.rename(p, p + ".moved"))
    attempt("remove " + p, lambda: os.remove(p))
attempt("create", lambda: overwrite(os.path.join(results, "planted.parquet")))
attempt("mkdir", lambda: os.mkdir(os.path.join(results, "planted")))
attempt("symlink", lambda: os.symlink("/etc/passwd", os.path.join(results, "link")))
attempt("rmtree", lambda: shutil.rmtree(results))
print("changed:", attempts)

def check(candidate):
    assert candidate(2, 3) == 5

check(lambda a, b: a + b)
'''


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (content hash or 'dir', permission bits) of everything under ``root``."""
    from taskprune.io import sha256_file

    out = {}
    for p in sorted(root.rglob("*")):
        kind = "dir" if p.is_dir() and not p.is_symlink() else ("link" if p.is_symlink() else sha256_file(p))
        out[str(p.relative_to(root))] = (kind, p.lstat().st_mode & 0o7777)
    return out


def _user_namespace_isolation():
    from taskprune.tasks.sandbox import Isolation, _probe

    unshare = shutil.which("unshare")
    prefix = (unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child") if unshare else ()
    if not unshare or not _probe(prefix):
        pytest.skip("unprivileged user namespaces are not available here")
    return Isolation("user", prefix, True, "user, network and PID namespaces")


def _has_landlock() -> bool:
    from taskprune.tasks.sandbox import landlock_abi

    return landlock_abi() >= 1


NO_LANDLOCK_DEFECT = (
    "without root and without Landlock (kernel < 5.13, or Landlock disabled) the program runs as the "
    "caller's own uid and only the Python guard stands between it and results/: open(path, 'w'), os.mkdir "
    "and os.symlink get through"
)
_NON_ROOT_MARKS = [] if _has_landlock() else [pytest.mark.xfail(strict=True, reason=NO_LANDLOCK_DEFECT)]


@pytest.mark.parametrize("mode", [
    "root",
    pytest.param("user-namespace", marks=_NON_ROOT_MARKS),
    pytest.param("guard-only", marks=_NON_ROOT_MARKS),
])
def test_sandboxed_code_cannot_touch_the_results_tree(mode: str, monkeypatch) -> None:
    """A program run by ``run_programs`` tries to write, delete and plant files in a results tree with
    ordinary permissions (directories 0755, files 0644, owned by the user running the pipeline)."""
    import tempfile

    from taskprune.tasks import sandbox
    from taskprune.tasks.sandbox import Isolation, run_programs

    if mode == "root":
        if os.geteuid() != 0 or sandbox.isolation().mode != "root":
            pytest.skip("root mode needs root with unshare and setpriv")
    elif mode == "user-namespace":
        isolation = _user_namespace_isolation()
        monkeypatch.setattr(sandbox, "isolation", lambda: isolation)
    else:
        isolation = Isolation("user", (), False, "resource limits and a Python-level guard")
        monkeypatch.setattr(sandbox, "isolation", lambda: isolation)

    base = Path(tempfile.mkdtemp(prefix="taskprune-results-"))
    try:
        os.chmod(base, 0o755)  # like a checkout: others may read and traverse, not write
        results = base / "results"
        files = [results / "metrics.parquet", results / "models" / "m" / "config.json",
                 results / "eval" / "m" / "base" / "math.parquet"]
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"precious " + f.name.encode())
            os.chmod(f, 0o644)
        for d in [results, *{p for f in files for p in f.parents if results in p.parents}]:
            os.chmod(d, 0o755)
        before = _tree(base)
        program = TAMPER.format(results=str(results), files=[str(f) for f in files])
        [result] = run_programs([program], timeout_s=20, memory_mb=512, workers=1)
        assert result.passed, f"the program did not run to its end: {result.status} {result.stderr[-800:]}"
        changed = result.stdout.strip().splitlines()[0]
        assert _tree(base) == before, f"results tree changed; the program reports {changed}"
        assert changed == "changed: []", changed
    finally:
        shutil.rmtree(base, ignore_errors=True)
