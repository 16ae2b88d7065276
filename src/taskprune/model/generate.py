"""Batched greedy generation with a KV cache, per-row stopping and results in the input order.

Every evaluation (hundreds of variants x four tasks) and the specialists' held-out check generate with this
one function, so it is written for throughput on small models, where Python overhead per step dominates:

- prompts are tokenised once, **sorted by length** and cut into batches under a padded-token budget
  (``rows * (longest prompt + max_new_tokens) <= token_budget``), so little compute goes to padding;
- batches are **left padded**; position ids follow ``transformers``' rule
  (``cumsum(attention_mask) - 1``, padding positions set to 0), so a row's tokens do not depend on its
  neighbours' lengths;
- one prefill call fills a ``DynamicCache``; each decode step then feeds one token per row. The loop is
  ours, not ``model.generate``: it does only ``argmax`` (no logits processors, stopping-criteria objects,
  or per-step kwargs re-preparation), which is what makes small models fast (see ``bench_generation``);
- rows stop on their own (EOS or a stop string); finished rows are **removed from the batch and the
  cache** so they cost nothing afterwards.

Greedy tokens equal ``model.generate(do_sample=False)`` row by row (tests/test_generate.py checks six
architectures). ``do_sample=True`` (temperature sampling with a seeded generator) exists for pass@k with
``n > 1`` samples.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskprune.model.loading import model_context_length

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation.

    ``text`` is the new text only (special tokens removed), cut before the first stop string;
    ``n_tokens`` counts the new tokens generated (the EOS token included, tokens after a stop string
    excluded); ``hit_limit`` is True when ``max_new_tokens`` was reached without EOS or a stop string.
    """

    text: str
    n_tokens: int
    hit_limit: bool
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # the new tokens (EOS included)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids: the generation config's (an int or a list) plus the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: bool = False) -> list[list[int]]:
    """Token ids of each prompt: the raw text (with the tokenizer's special tokens, e.g. BOS), or the chat
    template applied to a single user message with the generation prompt appended."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            from taskprune.errors import ModelError

            raise ModelError("chat_template is on, but the tokenizer has no chat template")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [list(x) for x in tokenizer(list(prompts))["input_ids"]]


def plan_batches(lengths: Sequence[int], max_new_tokens: int, batch_size: int, token_budget: int) -> list[list[int]]:
    """Indices of the prompts per batch: longest first, each batch within ``batch_size`` rows and
    ``rows * (its longest prompt + max_new_tokens) <= token_budget`` padded tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = (lengths[current[0]] if current else lengths[i]) + max_new_tokens
        if current and (len(current) >= batch_size or (len(current) + 1) * width > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class _StopChecker:
    """Finds stop strings in the newest tokens of each row without decoding whole rows every step.

    A stop string of ``L`` characters ending in the newest token spans at most ``L`` tokens (every token
    decodes to at least one character), so decoding the last ``L + 8`` tokens is enough; a match there
    is new, since an older one would have stopped the row already.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        self.stop_strings = [s for s in stop_strings if s]
        self.window = max((len(s) for s in self.stop_strings), default=0) + 8
        backend = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer of a fast tokenizer
        if backend is not None and hasattr(backend, "decode_batch"):
            self._decode_batch = lambda rows: backend.decode_batch(rows, skip_special_tokens=True)
        else:
            self._decode_batch = lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True)

    def __bool__(self) -> bool:
        return bool(self.stop_strings)

    def stopped(self, rows: list[list[int]]) -> list[bool]:
        tails = self._decode_batch([r[-self.window :] for r in rows])
        return [any(s in t for s in self.stop_strings) for t in tails]

    def cut(self, text: str) -> str:
        cuts = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return text[: min(cuts)] if cuts else text


def _forward_kwargs(model: Any, cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the decode steps and the extra ones of the prefill: transformers 5 names the
    cache argument ``cache`` (4.x ``past_key_values``); ``logits_to_keep=1`` (where the model accepts it)
    spares the prefill the LM head over every prompt position."""
    params = inspect.signature(model.forward).parameters
    step = {"cache": cache} if "cache" in params else {"past_key_values": cache}
    prefill = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return step, prefill


def _generate_batch(
    model: Any,
    rows: list[list[int]],
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    stop: _StopChecker,
    sampler: Any,
) -> list[tuple[list[int], bool]]:
    """Greedy (or sampled) continuation of one batch; returns (new token ids, stopped) per row.

    Shapes: ``input_ids``/``attention_mask`` [B, T] (left padded), ``position_ids`` [B, T]; each decode
    step feeds ``next_ids`` [b, 1] for the b rows still running, with ``attention_mask`` [b, T + step]
    and ``position_ids`` [b, 1] = last position + 1.
    """
    import torch
    from transformers import DynamicCache

    device = model.device
    batch = len(rows)
    longest = max(len(r) for r in rows)
    input_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, longest), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            input_ids[b, longest - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[b, longest - len(r) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    # Without padding the mask carries no information: dropping it (as ``generate`` does) lets the model
    # use its plain causal path, which is cheaper per step.
    use_mask = not bool(attention_mask.all())

    cache = DynamicCache(config=model.config)
    cache_kw, prefill_kw = _forward_kwargs(model, cache)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if eos_ids else None

    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    stopped = [False] * batch
    active = list(range(batch))  # original row index of each row still in the batch
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask if use_mask else None, position_ids=position_ids,
        use_cache=True, **cache_kw, **prefill_kw,
    ).logits[:, -1, :]  # [B, vocab]
    last_position = position_ids[:, -1:]  # [B, 1]
    for step in range(max_new_tokens):
        next_ids = sampler(logits)  # [b]
        finished = torch.isin(next_ids, eos) if eos is not None else torch.zeros_like(next_ids, dtype=torch.bool)
        next_list = next_ids.tolist()
        for row, token in zip(active, next_list, strict=True):
            new_tokens[row].append(token)
        done = finished.tolist()
        if stop:
            candidates = [k for k, d in enumerate(done) if not d]
            hits = stop.stopped([new_tokens[active[k]] for k in candidates]) if candidates else []
            for k, hit in zip(candidates, hits, strict=True):
                done[k] = hit
        for k, d in enumerate(done):
            if d:
                stopped[active[k]] = True
        if step == max_new_tokens - 1 or all(done):
            break
        if any(done):
            keep = [k for k, d in enumerate(done) if not d]
            keep_t = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(keep_t)
            attention_mask, last_position = attention_mask[keep_t], last_position[keep_t]
            next_ids = next_ids[keep_t]
            active = [active[k] for k in keep]
        if use_mask:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
        last_position = last_position + 1
        logits = model(
            input_ids=next_ids[:, None], attention_mask=attention_mask if use_mask else None,
            position_ids=last_position, use_cache=True, **cache_kw,
        ).logits[:, -1, :]
    return list(zip(new_tokens, stopped, strict=True))


def _greedy(logits: Any) -> Any:
    return logits.float().argmax(dim=-1)


def _make_sampler(temperature: float, seed: int, device: Any) -> Any:
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)

    def sample(logits: Any) -> Any:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return sample


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    *,
    stop_strings: Sequence[str] = (),
    batch_size: int = 64,
    token_budget: int = 16384,
    chat_template: bool = False,
    progress: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[Generation]:
    """Continue every prompt greedily (or by temperature sampling); results in the order of ``prompts``.

    A row stops at an EOS token (the model's generation config and the tokenizer's), at the first stop
    string in its new text, or after ``max_new_tokens`` new tokens. Prompts longer than the model's
    position limit minus ``max_new_tokens`` are cut from the left (logged).
    """
    import torch

    from taskprune.progress import progress_bar

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        return []
    encoded = encode_prompts(tokenizer, prompts, chat_template)
    limit = model_context_length(model.config)
    if limit is not None:
        keep = max(limit - max_new_tokens, 1)
        too_long = sum(len(r) > keep for r in encoded)
        if too_long:
            logger.warning("%d prompt(s) longer than %d tokens were cut from the left", too_long, keep)
            encoded = [r[-keep:] for r in encoded]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    if any(not r for r in encoded):  # an empty prompt without special tokens: condition on BOS (or pad)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad_id
        encoded = [r or [start] for r in encoded]
    eos_ids = eos_token_ids(model, tokenizer)
    stop = _StopChecker(tokenizer, stop_strings)
    sampler = _make_sampler(temperature, seed, model.device) if do_sample else _greedy

    results: list[Generation | None] = [None] * len(prompts)
    batches = plan_batches([len(r) for r in encoded], max_new_tokens, batch_size, token_budget)
    with torch.inference_mode(), progress_bar(
        total=len(prompts), desc="generate", unit="prompt", enabled=progress, leave=False
    ) as bar:
        for indices in batches:
            outputs = _generate_batch(
                model, [encoded[i] for i in indices], pad_id, eos_ids, max_new_tokens, stop, sampler
            )
            for i, (tokens, was_stopped) in zip(indices, outputs, strict=True):
                text = stop.cut(tokenizer.decode(tokens, skip_special_tokens=True))
                results[i] = Generation(text, len(tokens), not was_stopped, tuple(tokens))
            bar.update(len(indices))
    return [r for r in results if r is not None]
