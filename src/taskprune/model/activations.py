"""Per-neuron activation statistics of a model on a prompt set, streamed: the sufficient statistics
(n, mean, m2; Chan/Welford merge) of the per-prompt mean |activation| captured by one pre-hook per layer
on the MLP output projection, the token-budget batching, and the readers of prompt and statistics tables.
The formulas are in :mod:`taskprune.stats` (the stage). Imported by the stats, scores and overlap stages and
by :mod:`taskprune.perf`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskprune.errors import ConfigError, DataError, ModelError
from taskprune.model.hooks import HookSet

log = logging.getLogger(__name__)

STATS_COLUMNS: tuple[str, ...] = ("layer", "neuron", "n", "mean", "m2")


EXTRA_COLUMNS: tuple[str, ...] = ("sq_mean", "tokens", "w_out_norm")


@dataclass
class ActivationStats:
    """Sufficient statistics of ``v_p`` (per-prompt mean |a|) for every neuron, as float64 arrays.

    ``mean[l]``, ``m2[l]``, ``sq_mean[l]`` and ``w_out_norm[l]`` have shape ``[d_ff_l]``; ``n`` prompts and
    ``tokens`` non-padding tokens were seen. ``w_out_norm`` is a property of the model, not of the data.
    """

    n: int
    tokens: int
    mean: list[np.ndarray]
    m2: list[np.ndarray]
    sq_mean: list[np.ndarray]
    w_out_norm: list[np.ndarray] = field(default_factory=list)

    @property
    def widths(self) -> list[int]:
        return [len(m) for m in self.mean]

    @property
    def variance(self) -> list[np.ndarray]:
        """Population variance (ddof 0) of ``v_p`` per neuron."""
        return [m2 / self.n for m2 in self.m2]

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Statistics of the union of both prompt sets (Chan et al. 1979; exact up to rounding).

        n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta n_b / n,
        m2 = m2_a + m2_b + delta^2 n_a n_b / n,  sq_mean = (N_a sq_a + N_b sq_b) / (N_a + N_b).
        """
        if self.widths != other.widths:
            raise ModelError(f"cannot merge statistics of layer widths {self.widths} and {other.widths}")
        n = self.n + other.n
        tokens = self.tokens + other.tokens
        mean, m2, sq = [], [], []
        for ma, mb, m2a, m2b, sa, sb in zip(
            self.mean, other.mean, self.m2, other.m2, self.sq_mean, other.sq_mean, strict=True
        ):
            delta = mb - ma
            mean.append(ma + delta * (other.n / n))
            m2.append(m2a + m2b + delta**2 * (self.n * other.n / n))
            sq.append((sa * self.tokens + sb * other.tokens) / tokens)
        return ActivationStats(n, tokens, mean, m2, sq, self.w_out_norm or other.w_out_norm)

    def to_frame(self) -> Any:
        """A polars frame ``layer, neuron, n, mean, m2, sq_mean, tokens, w_out_norm`` (one row per neuron)."""
        import polars as pl

        layer = np.concatenate([np.full(w, li, dtype=np.int64) for li, w in enumerate(self.widths)])
        neuron = np.concatenate([np.arange(w, dtype=np.int64) for w in self.widths])
        rows = len(layer)
        w_out = np.concatenate(self.w_out_norm) if self.w_out_norm else np.full(rows, np.nan)
        return pl.DataFrame(
            {
                "layer": layer,
                "neuron": neuron,
                "n": np.full(rows, self.n, dtype=np.int64),
                "mean": np.concatenate(self.mean).astype(np.float64),
                "m2": np.concatenate(self.m2).astype(np.float64),
                "sq_mean": np.concatenate(self.sq_mean).astype(np.float64),
                "tokens": np.full(rows, self.tokens, dtype=np.int64),
                "w_out_norm": w_out.astype(np.float64),
            }
        )

    @classmethod
    def from_frame(cls, df: Any) -> ActivationStats:
        """Inverse of :meth:`to_frame` (rows sorted by layer, neuron; neurons 0..d_ff_l-1 per layer)."""
        df = df.sort("layer", "neuron")
        parts = df.partition_by("layer", maintain_order=True)

        def col(name: str) -> list[np.ndarray]:
            return [p[name].to_numpy().astype(np.float64) for p in parts]

        has_w = "w_out_norm" in df.columns and not df["w_out_norm"].is_nan().any()
        tokens = int(df["tokens"][0]) if "tokens" in df.columns else 0
        sq = col("sq_mean") if "sq_mean" in df.columns else [np.zeros(len(p)) for p in parts]
        n = df["n"].unique()
        if len(n) != 1:
            raise DataError(f"statistics have different prompt counts n across neurons: {n.to_list()[:5]}")
        return cls(int(n[0]), tokens, col("mean"), col("m2"), sq, col("w_out_norm") if has_w else [])


@dataclass
class TokenizedPrompts:
    """Token ids of every prompt (``int32`` arrays, at most ``max_length`` long) and how many were cut."""

    sequences: list[np.ndarray]
    n_truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=len(self.sequences))


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_length: int,
    chat_template: bool = False,
    chunk_size: int = 256,
) -> TokenizedPrompts:
    """Tokenize like generation does: the plain prompt with the tokenizer's special tokens (BOS), or the
    chat template's rendering of one user message with the generation prompt (its own special tokens).

    Prompts longer than ``max_length`` tokens keep their first ``max_length`` tokens; they are counted and
    a warning says how many. Ids are kept as compact numpy arrays (the only per-prompt memory).
    """
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelError("model.chat_template is true but the tokenizer has no chat template")
    sequences: list[np.ndarray] = []
    n_truncated = 0
    for start in range(0, len(prompts), chunk_size):
        chunk = list(prompts[start : start + chunk_size])
        if chat_template:
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in chunk
            ]
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(chunk)["input_ids"]
        for offset, seq in enumerate(ids):
            if len(seq) == 0:
                raise DataError(f"prompt {start + offset} tokenizes to no tokens (empty prompt?)")
            if len(seq) > max_length:
                n_truncated += 1
                seq = seq[:max_length]
            sequences.append(np.asarray(seq, dtype=np.int32))
    if n_truncated:
        log.warning(
            "%d of %d prompts were longer than stats.max_length=%d tokens and were truncated to it",
            n_truncated, len(prompts), max_length,
        )
    return TokenizedPrompts(sequences, n_truncated)


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    token_budget: int,
    max_batch_size: int,
    order: str = "length",
) -> list[np.ndarray]:
    """Group prompt indices into batches whose padded size ``len(batch) * max_length_in_batch`` stays within
    ``token_budget`` (a longer single prompt forms its own batch) and at most ``max_batch_size`` prompts.

    ``order='length'`` visits prompts longest first (stable), so similar lengths share a batch and padding is
    small; ``'original'`` keeps the input order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if order == "length":
        visit = np.argsort(-lengths, kind="stable")
    elif order == "original":
        visit = np.arange(len(lengths))
    else:
        raise ConfigError(f"stats.batch_order: expected length or original, got {order!r}")
    batches: list[np.ndarray] = []
    current: list[int] = []
    current_max = 0
    for index in visit:
        length = int(lengths[index])
        grown_max = max(current_max, length)
        if current and (len(current) + 1 > max_batch_size or grown_max * (len(current) + 1) > token_budget):
            batches.append(np.asarray(current, dtype=np.int64))
            current, grown_max = [], length
        current.append(int(index))
        current_max = grown_max
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


@dataclass
class PaddedBatch:
    """One padded batch on the CPU: ``input_ids``, ``attention_mask``, ``position_ids`` all ``[B, T]``."""

    input_ids: Any
    attention_mask: Any
    position_ids: Any
    lengths: np.ndarray  # [B] non-padding tokens per prompt

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


def pad_batch(sequences: Sequence[np.ndarray], *, pad_token_id: int = 0, padding_side: str = "right") -> PaddedBatch:
    """Pad token id arrays into a batch. Padding is masked out everywhere, so any id serves as ``pad``.

    Position ids count non-padding tokens (``cumsum(mask) - 1``) so that left- and right-padded prompts
    see the same positions. Right padding is the default: with causal attention no real token can attend
    to a pad, and no attention row is fully masked.
    """
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max())
    ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        ids[row, cols] = seq
        mask[row, cols] = 1
    attention_mask = torch.from_numpy(mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
    return PaddedBatch(torch.from_numpy(ids), attention_mask, position_ids, lengths)


def iter_padded_batches(
    sequences: Sequence[np.ndarray], plan: Sequence[np.ndarray], *, pad_token_id: int = 0, padding_side: str = "right"
) -> Iterator[PaddedBatch]:
    for indices in plan:
        yield pad_batch([sequences[i] for i in indices], pad_token_id=pad_token_id, padding_side=padding_side)


def forward_backbone(backbone: Any, batch: PaddedBatch, device: Any) -> Any:
    """The decoder stack's forward on one batch (no KV cache, no LM head)."""
    return backbone(
        input_ids=batch.input_ids.to(device, non_blocking=True),
        attention_mask=batch.attention_mask.to(device, non_blocking=True),
        position_ids=batch.position_ids.to(device, non_blocking=True),
        use_cache=False,
    )


_REDUCED = ("bfloat16", "float16")


_mixed_bmm_ok: dict[str, bool] = {}


def _bmm_to_float(a: Any, b: Any) -> Any:
    """``a @ b`` (batched) with a float32 (or wider) result, without upcasting ``b`` when the backend can.

    bf16/fp16 on CUDA: ``torch.bmm(..., out_dtype=float32)`` accumulates and returns fp32; elsewhere (or if
    this torch lacks it) the operands are upcast first. fp32/fp64 stay as they are.
    """
    import torch

    if str(b.dtype).removeprefix("torch.") not in _REDUCED:
        return torch.bmm(a, b)
    key = b.device.type
    if _mixed_bmm_ok.get(key, True):
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _mixed_bmm_ok[key] = False
    return torch.bmm(a.float(), b.float())


class _LayerMoments:
    """Running ``n, mean, m2`` of ``v_p`` and the token sum of ``a^2`` for one layer, float64 on the device."""

    def __init__(self, width: int, device: Any) -> None:
        import torch

        self.n = 0
        self.mean = torch.zeros(width, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(width, dtype=torch.float64, device=device)
        self.sq_sum = torch.zeros(width, dtype=torch.float64, device=device)

    def update(self, v: Any, sq_sum: Any) -> None:
        """Merge a batch: ``v`` is ``[B, d_ff]`` per-prompt means, ``sq_sum`` is ``[d_ff]`` (Chan update)."""
        b = v.shape[0]
        batch_mean = v.mean(0)
        batch_m2 = (v - batch_mean).square_().sum(0)
        n_new = self.n + b
        delta = batch_mean - self.mean
        self.mean.add_(delta, alpha=b / n_new)
        self.m2.add_(batch_m2).add_(delta.square_(), alpha=self.n * b / n_new)
        self.sq_sum.add_(sq_sum)
        self.n = n_new


class StatsCollector(HookSet):
    """Forward pre-hooks on every layer's MLP output projection that stream :class:`ActivationStats`.

    Per batch, with ``A`` the hook input ``[B, T, d_ff]`` and ``M`` the 0/1 attention mask ``[B, T]``:

        v   = (M[:, None, :] @ |A|)[:, 0, :] / T_b          per-prompt mean |a|, [B, d_ff]  (one bmm)
        sq  =  M.view(1, B*T) @ (|A| * |A|).view(B*T, d_ff)  token sum of a^2,     [d_ff]

    ``|A|`` lives in one scratch buffer reused by every layer and batch (squared in place), so the hook
    adds one elementwise pass and two thin matmuls per layer, and nothing is synchronised with the host.
    On the CPU the batch is processed a few prompts at a time (about ``cpu_chunk_bytes`` of activations),
    so that ``|A|`` is still in cache for both matmuls: this halves the hook's memory traffic.
    """

    cpu_chunk_bytes = 1 << 20

    def __init__(self, model: Any) -> None:
        import torch

        from taskprune.model import arch
        from taskprune.model.checkpoint import layer_widths

        self.model = model
        self.modules = arch.out_proj_modules(model)
        self.widths = layer_widths(model)
        self.device = next(model.parameters()).device
        self.moments = [_LayerMoments(w, self.device) for w in self.widths]
        self.tokens = 0
        self._handles: list[Any] = []
        self._scratch = torch.empty(0, device=self.device)
        self._mask: Any = None  # [B, T] 0/1 in the activation dtype
        self._counts: Any = None  # [B, 1] float64

    def _install(self) -> Iterator[Any]:
        for layer, module in enumerate(self.modules):
            yield module.register_forward_pre_hook(self._make_hook(layer))

    def set_batch(self, batch: PaddedBatch, dtype: Any) -> None:
        """Tell the hooks which tokens of the next forward are real."""
        import torch

        self._mask = batch.attention_mask.to(self.device, dtype=dtype, non_blocking=True)
        self._counts = torch.from_numpy(batch.lengths).to(self.device, torch.float64).unsqueeze(1)
        self.tokens += batch.n_tokens

    def _abs_into_scratch(self, a: Any) -> Any:
        import torch

        if self._scratch.numel() < a.numel() or self._scratch.dtype != a.dtype:
            self._scratch = torch.empty(a.numel(), dtype=a.dtype, device=a.device)
        return torch.abs(a, out=self._scratch[: a.numel()].view(a.shape))

    def _make_hook(self, layer: int) -> Callable[[Any, tuple[Any, ...]], None]:
        import torch

        def hook(module: Any, args: tuple[Any, ...]) -> None:
            a = args[0]  # [B, T, d_ff], the input of the output projection
            batch, seq, width = a.shape
            if self._mask.dtype != a.dtype:  # e.g. under autocast
                self._mask = self._mask.to(a.dtype)
            rows = batch
            if a.device.type == "cpu":
                rows = max(1, self.cpu_chunk_bytes // (seq * width * a.element_size()))
            sums = None  # [B, 1, d_ff]: sum_t M |a|
            sq = None  # [1, 1, d_ff]: sum_{b,t} M a^2
            for start in range(0, batch, rows):
                stop = min(batch, start + rows)
                abs_a = self._abs_into_scratch(a[start:stop])  # [b, T, d_ff]
                mask = self._mask[start:stop]  # [b, T]
                part = _bmm_to_float(mask.unsqueeze(1), abs_a)
                if sums is None:
                    sums = torch.empty((batch, 1, width), dtype=part.dtype, device=a.device)
                sums[start:stop] = part
                part_sq = _bmm_to_float(mask.reshape(1, 1, -1), abs_a.mul_(abs_a).view(1, -1, width))
                sq = part_sq if sq is None else sq.add_(part_sq)
            v = sums.view(batch, width).double() / self._counts  # [B, d_ff]
            self.moments[layer].update(v, sq.view(width).double())

        return hook

    def result(self, w_out_norm: list[np.ndarray] | None = None) -> ActivationStats:
        n = self.moments[0].n if self.moments else 0
        if n == 0:
            raise DataError("no prompts were processed")
        mean = [m.mean.cpu().numpy() for m in self.moments]
        m2 = [m.m2.cpu().numpy() for m in self.moments]
        sq = [m.sq_sum.cpu().numpy() / self.tokens for m in self.moments]
        for layer, (a, b, c) in enumerate(zip(mean, m2, sq, strict=True)):
            if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(c).all()):
                raise ModelError(
                    f"layer {layer}: activation statistics are not finite (NaN/inf activations; "
                    f"try float32 with device: cpu or a smaller stats.max_length)"
                )
        return ActivationStats(n, self.tokens, mean, m2, sq, w_out_norm or [])


def out_proj_column_norms(model: Any) -> list[np.ndarray]:
    """``||W_out[:, j]||_2`` per layer (float64), the weight half of the Wanda-style score."""
    import torch

    from taskprune.model import arch

    with torch.inference_mode():
        return [w.double().norm(dim=1).cpu().numpy() for w in arch.out_proj_neuron_weights(model)]


def collect_stats(
    model: Any,
    sequences: Sequence[np.ndarray],
    *,
    token_budget: int = 8192,
    max_batch_size: int = 64,
    batch_order: str = "length",
    padding_side: str = "right",
    pad_token_id: int = 0,
    progress: bool = True,
) -> ActivationStats:
    """Stream :class:`ActivationStats` of ``model`` over token-id ``sequences`` (one forward per batch)."""
    if len(sequences) == 0:
        raise DataError("no prompts to collect statistics on")
    plan = plan_batches(
        [len(s) for s in sequences], token_budget=token_budget, max_batch_size=max_batch_size, order=batch_order
    )
    batches = iter_padded_batches(sequences, plan, pad_token_id=pad_token_id, padding_side=padding_side)
    return collect_stats_over(model, batches, total=len(sequences), progress=progress)


def collect_stats_over(
    model: Any, batches: Iterable[PaddedBatch], *, total: int | None = None, progress: bool = True
) -> ActivationStats:
    """The streaming loop itself, over ready batches (the benchmark times exactly this)."""
    import torch

    from taskprune.model import arch
    from taskprune.progress import progress_bar

    stack = arch.backbone(model)
    dtype = next(model.parameters()).dtype
    collector = StatsCollector(model)
    bar = progress_bar(total=total, unit="prompt", desc="stats", enabled=progress, mininterval=0.5)
    with torch.inference_mode(), collector, bar:
        for batch in batches:
            collector.set_batch(batch, dtype)
            forward_backbone(stack, batch, collector.device)
            bar.update(len(batch.lengths))
    return collector.result(out_proj_column_norms(model))


def load_prompts(path: Any) -> list[str]:
    """The ``prompt`` column of a dataset Parquet; for calibration files only rows with ``for_stats`` true."""
    import polars as pl

    from taskprune.io import read_parquet

    df = read_parquet(path, ["prompt"], what="dataset")
    if "for_stats" in df.columns:
        if df.schema["for_stats"] != pl.Boolean:
            raise DataError(f"{path}: column 'for_stats' must be boolean, got {df.schema['for_stats']}")
        df = df.filter(pl.col("for_stats").fill_null(False))
    if df.schema["prompt"] != pl.String:
        raise DataError(f"{path}: column 'prompt' must be text, got {df.schema['prompt']}")
    if df.height == 0:
        raise DataError(f"{path}: dataset has no prompts" + (" with for_stats true" if "for_stats" in df.columns else ""))
    nulls = df["prompt"].null_count()
    if nulls:
        raise DataError(f"{path}: column 'prompt' has {nulls} missing value(s)")
    return df["prompt"].to_list()


def read_stats(path: Any) -> Any:
    """Read a statistics Parquet as polars, checking columns, dtypes, finiteness and (layer, neuron) keys."""
    import polars as pl

    from taskprune.io import read_parquet

    df = read_parquet(path, STATS_COLUMNS, what="statistics")
    if df.height == 0:
        raise DataError(f"{path}: statistics file has no rows")
    for name in ("layer", "neuron", "n"):
        if not df.schema[name].is_integer():
            raise DataError(f"{path}: column '{name}' must be an integer, got {df.schema[name]}")
    numeric = [c for c in ("mean", "m2", "sq_mean", "w_out_norm") if c in df.columns]
    for name in numeric:
        if not df.schema[name].is_numeric():
            raise DataError(f"{path}: column '{name}' must be numeric, got {df.schema[name]}")
    df = df.with_columns(pl.col(c).cast(pl.Float64) for c in numeric)
    bad = df.select(
        [pl.col(c).is_null().sum().alias(f"{c}: missing") for c in df.columns if c in STATS_COLUMNS + EXTRA_COLUMNS]
        + [(~pl.col(c).is_finite()).sum().alias(f"{c}: NaN/inf") for c in numeric if c != "w_out_norm"]
    ).row(0, named=True)
    problems = [f"{count} {what}" for what, count in bad.items() if count]
    if problems:
        raise DataError(f"{path}: statistics contain {', '.join(problems)} value(s); delete it and rerun its job")
    if (df["n"] < 1).any() or (df["m2"] < 0).any() or (df["mean"] < 0).any():
        raise DataError(f"{path}: statistics have n < 1 or negative mean/m2 (not a statistics file of this stage)")
    if df.select(pl.struct("layer", "neuron").is_duplicated().any()).item():
        raise DataError(f"{path}: statistics repeat a (layer, neuron) pair")
    return df.sort("layer", "neuron")


def load_model_and_tokenizer(path: Any, device: str = "auto") -> tuple[Any, Any]:
    """The model (checked and loaded by :mod:`taskprune.model.loading`) and its tokenizer; a tokenizer with
    neither pad nor EOS token is fine here (padding is masked, so any id serves)."""
    from taskprune.model.checkpoint import check_checkpoint_dir
    from taskprune.model.loading import load_model, load_tokenizer

    check_checkpoint_dir(path)  # one-line ModelError for a missing/incomplete checkpoint
    try:
        try:
            tokenizer = load_tokenizer(path, padding_side="right")
        except ModelError:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: cannot load the tokenizer ({first})") from exc
    return load_model(path, device), tokenizer
