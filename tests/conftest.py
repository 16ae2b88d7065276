"""Shared fixtures: tiny random-weight models of every supported architecture (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHITECTURES = ["llama", "qwen2", "mistral", "phi3", "gpt2", "gpt_neox"]


def tiny_config(arch: str, vocab_size: int = 96, hidden: int = 32, d_ff: int = 80, layers: int = 2):
    """A tiny config of the given model type (random weights are made by the model class)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=4, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=hidden, intermediate_size=d_ff, num_key_value_heads=2,
                              max_position_embeddings=128, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=hidden, intermediate_size=d_ff, num_key_value_heads=2,
                              max_position_embeddings=128, **common)
    if arch == "mistral":
        return tf.MistralConfig(hidden_size=hidden, intermediate_size=d_ff, num_key_value_heads=2,
                                max_position_embeddings=128, sliding_window=None, **common)
    if arch == "phi3":
        return tf.Phi3Config(hidden_size=hidden, intermediate_size=d_ff, num_key_value_heads=4,
                             max_position_embeddings=128, pad_token_id=0, **common)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_inner=d_ff, n_layer=layers, n_head=4,
                             n_positions=128, bos_token_id=1, eos_token_id=2)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=d_ff, max_position_embeddings=128,
                                **common)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, **kw):
    """A tiny random-weight causal LM in fp32 eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw))
    # Non-zero biases so that bias handling is actually exercised by equality tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Tests run beside other work on 2 cores: one torch thread keeps them predictable."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield


# ------------------------------------------------------------------------------ end-to-end smoke run
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "resources", "envs", "src"]


def copy_workflow(dest):
    """Copy what a workflow run needs (not results) into ``dest``; the package comes from the venv."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(workdir, *args, check=True, timeout=3600, env=None):
    """Run snakemake in ``workdir`` with the smoke config; returns the CompletedProcess."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml", *args]
    full_env = dict(__import__("os").environ)
    full_env["PATH"] = str(__import__("pathlib").Path(sys.executable).parent) + ":" + full_env.get("PATH", "")
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole DAG on config/smoke.yaml, run once per test session in a temp copy of the workflow."""
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke") / "wf")
    run_snakemake(workdir)
    return workdir
