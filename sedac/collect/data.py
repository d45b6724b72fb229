"""Dataset loading for ``sedac collect``: records -> rendered texts -> token sequences.

Sources (all through HF ``datasets``): ``builtin`` (the team-written prompts shipped in
``sedac/data/builtin_prompts.jsonl``), a local ``.jsonl``/``.json``/``.txt``/``.parquet`` file, or a
hub dataset id (needs network). A record yields one text from ``--field`` (auto-detected when not
given, in the order of :data:`AUTO_FIELDS`):

* a string column (``text``, ``prompt``, ``instruction`` ...) is used as is, or, when chat rendering
  is on, as one user message;
* ``turns`` (mt-bench / spec-bench: a list of user turns as strings) is rendered with the chat
  template from its **first** turn only (later turns need the model's own earlier answers);
* ``messages`` / ``conversations`` (list of ``{"role", "content"}``) is rendered whole.

Corpus mode tokenizes every text, joins them with EOS and cuts the stream into ``--max-length``
chunks (``is_prompt`` = 0). Generate mode keeps one prompt per record (``is_prompt`` = 1), truncated
on the left to leave room for ``--new-tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sedac.errors import DataError

AUTO_FIELDS = ("messages", "conversations", "turns", "prompt", "instruction", "question", "text")
_LOADERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


@dataclass
class Sequence:
    """One unit of collection: token ids; the first ``n_prompt`` are prompt tokens (generate mode)."""

    ids: list[int]
    n_prompt: int


BUILTIN_SETS = {
    "builtin": "builtin_prompts.jsonl",  # 70 hand-written prompts (chat, code, math, summaries, ...)
    "builtin-tasks": "builtin_tasks.jsonl",  # 660 templated tasks (scripts/make_builtin_tasks.py)
}


def builtin_path(name: str = "builtin") -> Path:
    return Path(str(resources.files("sedac") / "data" / BUILTIN_SETS[name]))


def load_records(dataset: str, split: str = "train", limit: int | None = None):
    """Load a ``datasets.Dataset`` for ``dataset`` (see module doc); clear errors on failure."""
    import datasets

    datasets.disable_progress_bars()
    path = builtin_path(dataset) if dataset in BUILTIN_SETS else Path(dataset)
    try:
        if dataset in BUILTIN_SETS or path.suffix in _LOADERS or path.exists():
            if not path.exists():
                raise DataError(f"--dataset {dataset}: file not found")
            loader = _LOADERS.get(path.suffix)
            if loader is None:
                raise DataError(f"--dataset {dataset}: unsupported file type {path.suffix!r}; "
                                f"use one of {', '.join(_LOADERS)}")
            ds = datasets.load_dataset(loader, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(dataset, split=split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (network, format, missing split)
        raise DataError(f"cannot load --dataset {dataset!r} (split {split!r}): {type(exc).__name__}: {exc}") from None
    if len(ds) == 0:
        raise DataError(f"--dataset {dataset!r} is empty")
    return ds


def pick_field(columns: list[str], field: str | None, dataset: str) -> str:
    if field is not None:
        if field not in columns:
            raise DataError(f"--field {field!r} is not in --dataset {dataset!r}; available fields: {', '.join(columns)}")
        return field
    for f in AUTO_FIELDS:
        if f in columns:
            return f
    raise DataError(f"no text field found in --dataset {dataset!r}; pass --field, available fields: {', '.join(columns)}")


def _messages(value: Any, field: str) -> list[dict[str, str]] | None:
    """Chat messages for a record value, or None for plain text."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [{"role": "user", "content": value[0]}]  # turns: first user turn only
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        msgs = []
        for m in value:
            role = m.get("role", m.get("from"))
            content = m.get("content", m.get("value"))
            role = {"human": "user", "gpt": "assistant"}.get(role, role)
            msgs.append({"role": str(role), "content": str(content)})
        return msgs
    raise DataError(f"--field {field!r}: unsupported value type {type(value).__name__} "
                    "(expected a string, a list of strings (turns) or a list of {role, content})")


def render_texts(ds, field: str, tokenizer, chat: bool, generation_prompt: bool) -> list[str]:
    """Texts of every record: chat records through the chat template, plain strings as they are
    (or as one user message when ``chat``)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    out = []
    for value in ds[field]:
        msgs = _messages(value, field)
        if msgs is None and chat:
            msgs = [{"role": "user", "content": value}]
        if msgs is None:
            out.append(value)
            continue
        if not has_template:
            raise DataError(f"--field {field!r} holds chat messages but the model's tokenizer has no chat template")
        last_user = msgs[-1]["role"] == "user"
        out.append(tokenizer.apply_chat_template(msgs, tokenize=False,
                                                 add_generation_prompt=generation_prompt and last_user))
    return out


def _encode(tokenizer, text: str) -> list[int]:
    # Chat-rendered text already carries its special tokens; plain text gets none added.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_sequences(texts: list[str], tokenizer, mode: str, max_length: int, new_tokens: int,
                    limit: int | None, lines: bool = False) -> list[Sequence]:
    """Token sequences for collection (see module doc). ``limit`` counts records (generate) or chunks (corpus).

    ``lines``: the records are the lines of one text file (``.txt``): corpus mode joins them with a
    newline instead of EOS."""
    if mode == "generate":
        room = max_length - new_tokens
        if room < 1:
            raise DataError(f"--max-length {max_length} leaves no room for a prompt with --new-tokens {new_tokens}")
        seqs = []
        for t in texts[:limit] if limit else texts:
            ids = _encode(tokenizer, t)
            if ids:
                ids = ids[-room:]
                seqs.append(Sequence(ids, len(ids)))
        if not seqs:
            raise DataError("every prompt is empty after tokenization")
        return seqs
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    seqs = []
    for t in texts:
        if not t.strip():
            continue
        if lines:
            stream.extend(_encode(tokenizer, t + "\n"))
        else:
            stream.extend(_encode(tokenizer, t))
            if eos is not None:
                stream.append(eos)
        while len(stream) >= max_length:
            seqs.append(Sequence(stream[:max_length], 0))
            stream = stream[max_length:]
            if limit and len(seqs) >= limit:
                return seqs
    if len(stream) >= 2:
        seqs.append(Sequence(stream, 0))
    if not seqs:
        raise DataError("the dataset holds no text (every record is empty)")
    return seqs[:limit] if limit else seqs


def load_sequences(cfg, tokenizer) -> tuple[list[Sequence], str]:
    """Sequences plus a dataset fingerprint (hash of the token ids) for a :class:`CollectConfig`."""
    from sedac.provenance import stable_hash

    ds = load_records(cfg.dataset, cfg.split)
    field = pick_field(list(ds.column_names), cfg.field, cfg.dataset)
    if cfg.mode == "generate" and cfg.limit:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    chat = cfg.chat if cfg.chat is not None else (cfg.mode == "generate" and tokenizer.chat_template is not None)
    texts = render_texts(ds, field, tokenizer, chat, generation_prompt=cfg.mode == "generate")
    seqs = build_sequences(texts, tokenizer, cfg.mode, cfg.max_length, cfg.new_tokens, cfg.limit,
                           lines=cfg.dataset.endswith(".txt"))
    fp = stable_hash([[s.ids, s.n_prompt] for s in seqs], length=32)
    return seqs, fp
