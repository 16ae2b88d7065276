"""Recovery training data: examples from a task's train split, the eval-leak guard, collation, micro-batches and
the seeded batch order every recipe shares (a matched budget). Torch is imported inside the functions only.
Imported by :mod:`taskprune.recover` and :mod:`taskprune.recovery`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskprune.errors import DataError, ModelError

#: Eval prompts shorter than this (after whitespace normalisation) are only matched exactly, not as
#: substrings of training texts, so a short conversational prompt ("Hi!") cannot cause a false alarm.
MIN_SUBSTRING_CHARS = 32


#: A batch is run as micro-batches of at most this many padded tokens (rows x longest row), with the
#: gradients accumulated, so a long-sequence batch of a large model fits in memory; the loss is still the
#: mean over all completion tokens of the whole batch.
MICROBATCH_TOKENS = 8192


def _normalise(text: str) -> str:
    return " ".join(text.split())


def check_no_eval_leak(
    train_texts: Sequence[str],
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    *,
    train_path: str | os.PathLike[str] = "train",
    eval_path: str | os.PathLike[str] = "eval",
) -> None:
    """Raise :class:`DataError` if an evaluation prompt appears in the training data.

    An eval prompt leaks when, after collapsing whitespace, it equals a training prompt, or (when it has at
    least :data:`MIN_SUBSTRING_CHARS` characters) occurs inside a training text (prompt + completion).
    """
    train_prompt_set = {_normalise(p) for p in train_prompts}
    # One joined string: each substring search is a single fast scan instead of a loop over rows.
    joined = "\x00".join(_normalise(t) for t in train_texts)
    leaked = []
    for prompt in eval_prompts:
        norm = _normalise(prompt)
        if not norm:
            continue
        if norm in train_prompt_set or (len(norm) >= MIN_SUBSTRING_CHARS and norm in joined):
            leaked.append(norm)
    if leaked:
        example = leaked[0] if len(leaked[0]) <= 60 else leaked[0][:57] + "..."
        raise DataError(
            f"{train_path}: {len(leaked)} evaluation prompt(s) of {eval_path} appear in the recovery training "
            f"data (e.g. {example!r}); remove them from the train split"
        )


@dataclass(frozen=True)
class TrainingExample:
    """One tokenized training sequence; the loss covers ``input_ids[n_prompt:]``."""

    input_ids: tuple[int, ...]
    n_prompt: int


def build_examples(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    seq_len: int,
    *,
    chat_template: bool = False,
) -> tuple[list[TrainingExample], dict[str, int]]:
    """Tokenize ``prompt ++ completion ++ eos`` per row, truncated on the right to ``seq_len`` tokens.

    Prompts are encoded by :func:`taskprune.model.generate.encode_prompts`, the very function generation uses
    (special tokens such as BOS, or the chat template with the generation prompt), so the model is trained
    on exactly the prompt tokens it is evaluated on. Rows whose prompt alone fills ``seq_len`` leave no
    completion token to learn from and are dropped. Returns the examples and the counts
    ``{"n_rows", "n_examples", "n_truncated", "n_dropped"}``.
    """
    from taskprune.model.generate import encode_prompts

    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("tokenizer has no EOS token; recovery needs one to end each completion")
    prompt_ids = encode_prompts(tokenizer, list(prompts), chat_template)
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"] if completions else []
    examples: list[TrainingExample] = []
    n_truncated = n_dropped = 0
    for p_ids, c_ids in zip(prompt_ids, completion_ids, strict=True):
        if len(p_ids) >= seq_len:
            n_dropped += 1
            continue
        ids = [*p_ids, *c_ids, eos]
        if len(ids) > seq_len:
            n_truncated += 1
            ids = ids[:seq_len]
        examples.append(TrainingExample(tuple(ids), len(p_ids)))
    counts = {"n_rows": len(prompts), "n_examples": len(examples), "n_truncated": n_truncated, "n_dropped": n_dropped}
    return examples, counts


def collate(examples: Sequence[TrainingExample], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest sequence.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]`` (T = longest example);
    ``labels`` is ``-100`` on prompt and padding positions (ignored by the loss).
    """
    import torch

    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        labels[i, e.n_prompt : n] = ids[e.n_prompt :]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def split_microbatches(batch: Sequence[TrainingExample], max_tokens: int | None) -> list[list[TrainingExample]]:
    """Cut a batch, sorted by length (least padding), into consecutive micro-batches whose padded size
    ``rows * longest row`` stays within ``max_tokens`` (a single longer row forms its own micro-batch)."""
    ordered = sorted(batch, key=lambda e: len(e.input_ids))
    if max_tokens is None:
        return [ordered]
    micro: list[list[TrainingExample]] = [[]]
    for example in ordered:  # ascending lengths: this example is the longest of its micro-batch so far
        if micro[-1] and (len(micro[-1]) + 1) * len(example.input_ids) > max_tokens:
            micro.append([])
        micro[-1].append(example)
    return micro


def batch_order(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices of each step: seeded permutations of all examples, epoch after epoch, cut into
    consecutive batches of ``batch_size`` (a batch may straddle two epochs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    order: list[int] = []
    while len(order) < needed:
        order.extend(torch.randperm(n_examples, generator=generator).tolist())
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]
