"""Decoding engines the benchmarks time: the stock transformers forward and the hand-written tight decoder.

The stock transformers forward (:class:`HFEngine`, and :class:`taskprune.perf.paired.StockRunner` for the
paired trials) is what users run and decides. :class:`TightEngine` (Llama, Qwen2, Mistral) runs the decoder
from the model's own weights with fused q/k/v and gate/up projections, residual adds fused into ``addmm``, a
static KV cache and PyTorch's fused attention (~15 kernel calls per layer); the tests check it token for
token against greedy decoding with the stock model. It is reported only as an *upper bound* on what a
leaner decoder could reach, never as the verdict.

Torch is imported inside the functions only. Imported by the rest of :mod:`taskprune.perf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskprune.errors import ModelError

TIGHT_MODEL_TYPES = ("llama", "qwen2", "mistral")
TIGHT_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # position-independent cos/sin tables

def tight_unsupported_reason(config: Any) -> str | None:
    """Why the tight engine cannot run this model (``None`` if it can)."""
    if config.model_type not in TIGHT_MODEL_TYPES:
        return f"model type '{config.model_type}' (tight engine: {', '.join(TIGHT_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation '{config.hidden_act}' (tight engine: silu)"
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type not in TIGHT_ROPE_TYPES:
        return f"rope type '{rope_type}'"
    if float(rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else 1.0) != 1.0:
        return "partial rotary embeddings"
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type == "mistral" or "sliding_attention" in layer_types):
        return f"sliding-window attention (window {window})"
    return None


@dataclass
class _TightLayer:
    norm_in: Any  # [d] RMSNorm weight before attention
    qkv: Any  # [(H + 2K) h, d]: q, k, v projections stacked
    qkv_bias: Any  # [(H + 2K) h] or None
    o: Any  # [d, H h]
    o_bias: Any  # [d] or None
    norm_post: Any  # [d] RMSNorm weight before the MLP
    gate_up: Any  # [2 f, d]: gate then up projection
    gate_up_bias: Any  # [2 f] or None
    down: Any  # [d, f]
    down_bias: Any  # [d] or None

    @property
    def width(self) -> int:
        return int(self.down.shape[1])


class TightEngine:
    """Greedy decoding of a Llama-family decoder straight from its weights, with a static KV cache.

    Computes exactly the model's function (RMSNorm, rotary q/k, causal grouped-query attention, SwiGLU
    MLP, LM head on the last position) with few large kernels per layer:
    ``rms_norm, linear(qkv), rotary (mul + addcmul), 2 cache writes, sdpa, addmm(o + residual), rms_norm,
    linear(gate_up), silu, mul, addmm(down + residual)``. The model's modules are consumed (their weights
    are moved into the engine layer by layer), so memory is not doubled.
    """

    name = "tight"

    def __init__(self, model: Any, batch_size: int, max_len: int) -> None:
        import torch

        reason = tight_unsupported_reason(model.config)
        if reason:
            raise ModelError(f"tight engine does not support {reason}; use --engine hf")
        config = model.config
        core = model.model
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or self.hidden // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.batch_size, self.max_len = batch_size, max_len
        weight = core.embed_tokens.weight
        device, dtype = weight.device, weight.dtype

        # cos/sin tables for positions 0..max_len-1 from the model's own rotary module (rope scaling
        # included): [max_len, h]. rotate_half(x) = cat(-x2, x1) = x[..., rotate] * sign.
        with torch.no_grad():
            positions = torch.arange(max_len, device=device)[None]
            cos, sin = core.rotary_emb(weight[:1], position_ids=positions)
        if cos.shape[-1] != self.head_dim:
            raise ModelError("tight engine: rotary table width differs from the head size")
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device=device, dtype=cos.dtype)
        self.cos = cos[0].contiguous()  # [max_len, h]
        self.sin_signed = (sin[0] * sign).contiguous()  # [max_len, h]
        self.rotate = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(device)

        self.layers: list[_TightLayer] = []
        with torch.no_grad():
            for layer in core.layers:
                attn, mlp = layer.self_attn, layer.mlp
                projs = (attn.q_proj, attn.k_proj, attn.v_proj)
                biases = [p.bias for p in projs]
                self.layers.append(
                    _TightLayer(
                        norm_in=layer.input_layernorm.weight.detach(),
                        qkv=torch.cat([p.weight for p in projs]).detach(),
                        qkv_bias=None if biases[0] is None else torch.cat(biases).detach(),
                        o=attn.o_proj.weight.detach(),
                        o_bias=None if attn.o_proj.bias is None else attn.o_proj.bias.detach(),
                        norm_post=layer.post_attention_layernorm.weight.detach(),
                        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                        gate_up_bias=None
                        if mlp.gate_proj.bias is None
                        else torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias]).detach(),
                        down=mlp.down_proj.weight.detach(),
                        down_bias=None if mlp.down_proj.bias is None else mlp.down_proj.bias.detach(),
                    )
                )
                del layer.self_attn, layer.mlp  # free the originals of the concatenated weights now
        self.embed = weight.detach()
        self.norm = core.norm.weight.detach()
        self.head = model.lm_head.weight.detach()  # the same storage as `embed` when tied

        # Static KV cache, [B, K, max_len, h] per layer.
        shape = (batch_size, self.kv_heads, max_len, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]

    def reset(self) -> None:
        """Nothing to do: a prefill from position 0 overwrites every cache entry later steps read."""

    def forward(self, tokens: Any, start: int) -> Any:
        """Feed ``tokens`` ``[B, S]`` at positions ``start..start+S-1``; return the next tokens ``[B]``.

        ``S > 1`` is a prefill from position 0 (causal attention within the prompt); ``S == 1`` a decode
        step attending to every cached position ``0..start``.
        """
        import torch
        import torch.nn.functional as F

        batch, seq = tokens.shape
        if seq > 1 and start != 0:
            raise ValueError("a multi-token forward must start at position 0")
        end = start + seq
        d, n_q, n_kv, hd = self.hidden, self.heads, self.kv_heads, self.head_dim
        n_qk = (n_q + n_kv) * hd
        cos = self.cos[start:end].unsqueeze(1)  # [S, 1, h], broadcast over batch and heads
        sin = self.sin_signed[start:end].unsqueeze(1)
        x = F.embedding(tokens.reshape(-1), self.embed)  # [B*S, d]
        for i, w in enumerate(self.layers):
            h = F.rms_norm(x, (d,), w.norm_in, self.eps)
            qkv = F.linear(h, w.qkv, w.qkv_bias)  # [B*S, (H + 2K) h]
            qk = qkv[:, :n_qk].view(batch, seq, n_q + n_kv, hd)
            qk = torch.addcmul(qk * cos, qk[..., self.rotate], sin)  # q cos + rotate_half(q) sin
            self.keys[i][:, :, start:end] = qk[:, :, n_q:].transpose(1, 2)  # [B, K, S, h]
            self.values[i][:, :, start:end] = qkv[:, n_qk:].view(batch, seq, n_kv, hd).transpose(1, 2)
            attn = F.scaled_dot_product_attention(
                qk[:, :, :n_q].transpose(1, 2),  # [B, H, S, h]
                self.keys[i][:, :, :end],
                self.values[i][:, :, :end],
                is_causal=seq > 1,
                enable_gqa=n_q != n_kv,
            )  # [B, H, S, h]
            attn = attn.transpose(1, 2).reshape(batch * seq, n_q * hd)
            x = torch.addmm(x if w.o_bias is None else x + w.o_bias, attn, w.o.t())  # x + attn o^T
            h = F.rms_norm(x, (d,), w.norm_post, self.eps)
            gate_up = F.linear(h, w.gate_up, w.gate_up_bias)  # [B*S, 2 f]
            act = F.silu(gate_up[:, : w.width]) * gate_up[:, w.width :]  # [B*S, f]
            x = torch.addmm(x if w.down_bias is None else x + w.down_bias, act, w.down.t())
        last = x.view(batch, seq, d)[:, -1]  # [B, d]: logits only where the next token is chosen
        logits = F.linear(F.rms_norm(last, (d,), self.norm, self.eps), self.head)  # [B, V]
        return logits.argmax(-1)

    def prefill(self, tokens: Any) -> Any:
        return self.forward(tokens, 0)

    def decode(self, first: Any, prompt_len: int, steps: int) -> Any:
        """``steps`` greedy decode steps starting from token ``first`` ``[B]``; returns ``[B, steps]``."""
        import torch

        out = []
        token = first
        for s in range(steps):
            token = self.forward(token[:, None], prompt_len + s)
            out.append(token)
        return torch.stack(out, 1)


class HFEngine:
    """Greedy decoding through the stock transformers forward (any supported architecture).

    A ``StaticCache`` (else a ``DynamicCache``) sized for the whole generation; with ``compile`` the decode
    step is ``torch.compile``d (prefill stays eager, as transformers recommends for static caches).
    """

    name = "hf"

    def __init__(self, model: Any, batch_size: int, max_len: int, static_cache: bool, compile: bool) -> None:
        import torch
        from transformers import DynamicCache, StaticCache

        self.model = model
        self.cache = (
            StaticCache(config=model.config, max_cache_len=max_len)
            if static_cache
            else DynamicCache(config=model.config)
        )
        self.step = torch.compile(model.forward, dynamic=False) if compile else model.forward

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, tokens: Any) -> Any:
        out = self.model(tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def decode(self, first: Any, prompt_len: int, steps: int) -> Any:
        import torch

        out = []
        token = first
        for _ in range(steps):
            logits = self.step(token[:, None], cache=self.cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1)
            out.append(token)
        return torch.stack(out, 1)


def resolve_engine(requested: str, config: Any) -> str:
    """``auto`` -> ``tight`` where supported, else ``hf``."""
    if requested == "auto":
        return "hf" if tight_unsupported_reason(config) else "tight"
    if requested == "tight":
        reason = tight_unsupported_reason(config)
        if reason:
            raise ModelError(f"--engine tight does not support {reason}; use --engine hf or auto")
    return requested


def make_engine(
    model: Any, engine: str, batch_size: int, max_len: int, static_cache: bool, compile: bool
) -> Any:
    if engine == "tight":
        return TightEngine(model, batch_size, max_len)
    return HFEngine(model, batch_size, max_len, static_cache=static_cache, compile=compile)


def generate_tokens(engine: Any, tokens: Any, new_tokens: int) -> Any:
    """Greedy continuation ``[B, new_tokens]`` of prompts ``tokens`` ``[B, T]`` (the benchmarked path)."""
    import torch

    engine.reset()
    first = engine.prefill(tokens)
    if new_tokens == 1:
        return first[:, None]
    rest = engine.decode(first, tokens.shape[1], new_tokens - 1)
    return torch.cat([first[:, None], rest], 1)


def engine_dtype_bytes(engine: Any) -> int:
    """Bytes per element of the weights the engine multiplies by."""
    weight = engine.embed if isinstance(engine, TightEngine) else engine.model.get_input_embeddings().weight
    return int(weight.element_size())


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_prompts(vocab_size: int, batch_size: int, prompt_tokens: int, device: Any) -> Any:
    """Fixed random prompts ``[B, T]`` (seed 0): every variant sees the same input ids."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, prompt_tokens), generator=gen).to(device)
