"""Prompt sets and quality corpora for ``sedac bench`` (through HF ``datasets``, via sedac.collect.data).

Sources: ``builtin`` (the team-written prompts in ``sedac/data/builtin_prompts.jsonl``), a local
``.jsonl/.json/.txt/.parquet`` file, or a hub dataset id. Chat records (``turns``: first user turn;
``messages``: as given) are rendered with the model's chat template when ``chat`` is set.
"""

from __future__ import annotations

from typing import Any

from sedac.bench.config import PromptSet
from sedac.errors import DataError


def _records(source: str, field: str | None, split: str):
    from sedac.collect.data import load_records, pick_field

    ds = load_records(source, split=split)
    return ds, pick_field(list(ds.column_names), field, source)


def prompt_messages(ps: PromptSet) -> list[list[dict[str, str]]]:
    """The first ``ps.n`` non-empty prompts as chat message lists (one user turn for plain text)."""
    ds, f = _records(ps.source, ps.field, ps.split)
    out: list[list[dict[str, str]]] = []
    for value in ds[f]:
        if isinstance(value, str):
            msgs = [{"role": "user", "content": value}] if value.strip() else []
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            msgs = [{"role": "user", "content": value[0]}]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            msgs = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in value]
            while msgs and msgs[-1]["role"] != "user":
                msgs.pop()
        else:
            msgs = []
        if msgs:
            out.append(msgs)
        if len(out) == ps.n:
            break
    if not out:
        raise DataError(f"prompts.source {ps.source!r}: no usable prompts in field {f!r}")
    return out


def prompt_token_ids(ps: PromptSet, tokenizer) -> list[list[int]]:
    """Token ids of each prompt, chat-rendered with a generation prompt when ``ps.chat``."""
    ids = []
    for msgs in prompt_messages(ps):
        if ps.chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            ids.append(list(tokenizer(msgs[-1]["content"])["input_ids"]))
    return ids


def corpus_chunks(source: str, field: str | None, tokenizer, n_sequences: int, seq_len: int) -> list[list[int]]:
    """``n_sequences`` chunks of exactly ``seq_len`` tokens from the concatenated corpus text.

    ``builtin`` uses the built-in prompts' texts; a ``.txt`` file is read line by line.
    """
    ds, f = _records(source, field, "train")
    texts: list[str] = []
    for value in ds[f]:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(v if isinstance(v, str) else str(v.get("content", "")) for v in value)
    eos = tokenizer.eos_token or "\n"
    ids: list[int] = []
    need = n_sequences * seq_len
    for t in texts:
        if t.strip():
            ids.extend(tokenizer(t.strip() + eos, add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:n_sequences]
    if not chunks:
        raise DataError(f"quality.corpus {source!r}: fewer than {seq_len} tokens of text")
    return chunks


def describe(ps: PromptSet) -> dict[str, Any]:
    return {"source": ps.source, "field": ps.field, "split": ps.split, "n": ps.n, "chat": ps.chat}
