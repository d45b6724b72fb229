"""Prompt sets and quality corpora for ``sedac bench`` (through HF ``datasets``, via sedac.collect.data).

Sources: ``builtin`` (the team-written prompts in ``sedac/data/builtin_prompts.jsonl``), a local
``.jsonl/.json/.txt/.parquet`` file, or a hub dataset id. Chat records (``turns``: first user turn;
``messages``: as given) are rendered with the model's chat template when ``chat`` is set.

Which records: file order, or with ``shuffle_seed`` the order in which ``sedac calibrate --seed``
draws its generate-mode units (:func:`record_order`); ``skip`` then drops the first records. A bench
on ``source = --data``, ``shuffle_seed = --seed``, ``skip = --grid-sequences + --n-sequences`` runs on
prompts of the calibration distribution that calibration never used (tests/bench/test_prompts.py
checks the two orders agree). The row indices used are recorded (:func:`describe`).
"""

from __future__ import annotations

import random
from typing import Any

from sedac.bench.config import PromptSet
from sedac.errors import DataError


def _records(source: str, field: str | None, split: str):
    from sedac.collect.data import load_records, pick_field

    ds = load_records(source, split=split)
    return ds, pick_field(list(ds.column_names), field, source)


def record_order(n_records: int, seed: int | None) -> list[int]:
    """Row indices in the order prompts are taken: file order, or (``seed`` set) shuffled exactly as
    :func:`sedac.calibration.data.load_cal_sequences` shuffles its generate-mode prompts
    (``random.Random(seed).shuffle`` over one entry per record; the permutation depends only on
    the seed and the number of records)."""
    order = list(range(n_records))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def _messages(value) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else []
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [{"role": "user", "content": value[0]}]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        msgs = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in value]
        while msgs and msgs[-1]["role"] != "user":
            msgs.pop()
        return msgs
    return []


def select_prompts(ps: PromptSet) -> list[tuple[int, list[dict[str, str]]]]:
    """``(row index, chat messages)`` of the prompts: records in :func:`record_order`, the first
    ``ps.skip`` dropped, then the first ``ps.n`` usable ones."""
    ds, f = _records(ps.source, ps.field, ps.split)
    values = list(ds[f])
    order = record_order(len(values), ps.shuffle_seed)[ps.skip:]
    out: list[tuple[int, list[dict[str, str]]]] = []
    for i in order:
        msgs = _messages(values[i])
        if msgs:
            out.append((i, msgs))
        if len(out) == ps.n:
            break
    if not out:
        left = f" after skipping {ps.skip} of its {len(values)} records" if ps.skip else ""
        raise DataError(f"prompts.source {ps.source!r}: no usable prompts in field {f!r}{left}")
    return out


def prompt_messages(ps: PromptSet) -> list[list[dict[str, str]]]:
    """The selected prompts (:func:`select_prompts`) as chat message lists (one user turn for plain text)."""
    return [m for _, m in select_prompts(ps)]


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
    """The prompt set as recorded in results, with the dataset row indices actually used."""
    return {"source": ps.source, "field": ps.field, "split": ps.split, "n": ps.n, "chat": ps.chat,
            "shuffle_seed": ps.shuffle_seed, "skip": ps.skip, "rows": [i for i, _ in select_prompts(ps)]}
