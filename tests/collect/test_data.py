"""Dataset loading: each file type, field detection, chat rendering, error messages."""

from __future__ import annotations

import json

import pytest

from sedac.collect.config import CollectConfig
from sedac.collect.data import build_sequences, load_records, load_sequences, pick_field, render_texts
from sedac.errors import ConfigError, DataError


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def test_file_types_load_same_texts(tmp_path):
    import datasets

    rows = [{"text": "hello world"}, {"text": "second line"}]
    jl = _write(tmp_path / "a.jsonl", rows)
    js = tmp_path / "a.json"
    js.write_text(json.dumps(rows))
    tx = tmp_path / "a.txt"
    tx.write_text("hello world\nsecond line\n")
    pq = tmp_path / "a.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    for p in (jl, js, tx, pq):
        ds = load_records(str(p))
        assert ds["text"] == ["hello world", "second line"], p.suffix


def test_builtin_prompts_are_diverse():
    ds = load_records("builtin")
    assert 60 <= len(ds) <= 100
    assert pick_field(ds.column_names, None, "builtin") == "prompt"
    assert {"chat", "instruction", "code", "math", "summary"} <= set(ds["category"])
    assert len(set(ds["prompt"])) == len(ds)


def test_turns_render_first_user_turn_with_template(tmp_path, tiny_tok):
    p = _write(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": ["First question?", "Follow-up."]}])
    ds = load_records(str(p))
    assert pick_field(ds.column_names, None, str(p)) == "turns"
    (text,) = render_texts(ds, "turns", tiny_tok, chat=False, generation_prompt=True)
    assert text == "<|user|>First question?\n<|assistant|>"


def test_messages_and_plain_chat_rendering(tmp_path, tiny_tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    p = _write(tmp_path / "m.jsonl", [{"messages": msgs, "prompt": "plain"}])
    ds = load_records(str(p))
    (text,) = render_texts(ds, "messages", tiny_tok, chat=False, generation_prompt=True)
    assert text == "<|user|>hi\n<|assistant|>hello\n"  # last turn is the assistant's: no generation prompt
    (plain,) = render_texts(ds, "prompt", tiny_tok, chat=False, generation_prompt=True)
    assert plain == "plain"
    (chat,) = render_texts(ds, "prompt", tiny_tok, chat=True, generation_prompt=True)
    assert chat == "<|user|>plain\n<|assistant|>"


def test_corpus_chunks_and_generate_truncation(tiny_tok):
    texts = ["abcdefghij", "klmnopqrst"]  # byte tokenizer: one token per char
    seqs = build_sequences(texts, tiny_tok, "corpus", max_length=8, new_tokens=4, limit=None)
    assert [len(s.ids) for s in seqs] == [8, 8, 6]  # 10 + eos + 10 + eos = 22 tokens
    assert seqs[1].ids[2] == tiny_tok.eos_token_id and all(s.n_prompt == 0 for s in seqs)
    gen = build_sequences(texts, tiny_tok, "generate", max_length=8, new_tokens=4, limit=1)
    assert len(gen) == 1 and gen[0].ids == tiny_tok("ghij", add_special_tokens=False)["input_ids"]
    assert gen[0].n_prompt == 4


def test_errors_are_clear(tmp_path, tiny_tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty|cannot load"):
        load_records(str(empty))
    p = _write(tmp_path / "q.jsonl", [{"question": "x", "category": "y"}])
    with pytest.raises(DataError, match="available fields: question, category"):
        load_sequences(CollectConfig(out=str(tmp_path / "o"), dataset=str(p), field="body"), tiny_tok)
    with pytest.raises(DataError, match="file not found"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a\n")
        load_records(str(tmp_path / "x.csv"))
    blank = _write(tmp_path / "blank.jsonl", [{"text": "  "}])
    with pytest.raises(DataError, match="no text"):
        load_sequences(CollectConfig(out=str(tmp_path / "o"), dataset=str(blank)), tiny_tok)


def test_config_validation_names_flags(tmp_path):
    cfg = CollectConfig(out=str(tmp_path), layers=[2, 5], bands=[(1, 3)])
    with pytest.raises(ConfigError, match="--layers: layer 5 is out of range"):
        cfg.validate_model(4)
    with pytest.raises(ConfigError, match="--skip-band 2-4 is out of range"):
        CollectConfig(out=str(tmp_path), layers=[2], bands=[(2, 4)]).validate_model(4)
    with pytest.raises(ConfigError, match="--mode"):
        CollectConfig(out=str(tmp_path), mode="chat")
    with pytest.raises(ConfigError, match="--skip-band 3-1"):
        CollectConfig(out=str(tmp_path), bands=[(3, 1)])


def test_builtin_tasks_file_is_what_its_generator_writes():
    """660 distinct requests; the first release's 240 rows (40 topics) stay rows 0-239 (a --limit prefix is
    stable); none repeats a hand-written ``builtin`` prompt (the probe's training data)."""
    import json
    from pathlib import Path

    from sedac.testing.scripts import load_script

    root = Path(__file__).resolve().parents[2]
    gen = load_script("make_builtin_tasks")
    rows = [json.loads(line) for line in (root / "sedac" / "data" / "builtin_tasks.jsonl").read_text().splitlines()]
    assert rows == gen.build_rows() and len(rows) == 660 == len({r["prompt"] for r in rows})
    first = {t for t in gen.TOPICS if any(t in r["prompt"] for r in rows[:240])}
    assert first == set(gen.TOPICS) and not any(t in r["prompt"] for r in rows[:240] for t in gen.MORE_TOPICS)
    hand = {json.loads(line)["prompt"] for line in (root / "sedac" / "data" / "builtin_prompts.jsonl").read_text().splitlines()}
    assert not hand & {r["prompt"] for r in rows}
