"""Tiny random decoder models (Llama / Qwen2) saved as HF folders.

head_dim is 64 so that vLLM's CPU attention accepts them. Weights are explicitly randomised
(``normal(0, 0.02)`` plus a larger embedding scale), never left at allocation values.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_model(out_dir: str | Path, arch: str = "llama", num_layers: int = 4, hidden: int = 128,
                    intermediate: int = 256, vocab: int = 512, seed: int = 0) -> Path:
    """Write a tiny random model + a tokenizer borrowed from nothing (byte-level, built locally)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out_dir = Path(out_dir)
    common = dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=num_layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64,
        vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, rms_norm_eps=1e-5,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common)
        cfg.architectures = ["LlamaForCausalLM"]
    elif arch == "qwen2":
        cfg = Qwen2Config(**common)
        cfg.architectures = ["Qwen2ForCausalLM"]
    else:
        raise ValueError(f"unknown tiny arch {arch}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.05)
            elif "embed" in name or "lm_head" in name:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out_dir, safe_serialization=True)
    _tiny_tokenizer(vocab).save_pretrained(out_dir)
    return out_dir


def _tiny_tokenizer(vocab: int):
    """Byte-level tokenizer: ids 0-2 special (pad, bos, eos), then the 256 byte symbols; no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    table = {"<pad>": 0, "<s>": 1, "</s>": 2}
    table.update({ch: i + 3 for i, ch in enumerate(alphabet)})
    assert len(table) <= vocab, "tiny vocab must hold 259 byte/special tokens"
    tk = Tokenizer(models.BPE(vocab=table, merges=[], unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast
