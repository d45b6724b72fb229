"""Bench prompt selection: order, skip, recorded rows, and the held-out split against calibration."""

from __future__ import annotations

import json

import pytest

from sedac.bench.config import PromptSet
from sedac.errors import DataError


def _texts(source):
    from sedac.collect.data import builtin_path

    return [json.loads(line)["prompt"] for line in builtin_path(source).read_text().splitlines()]


def test_skip_and_shuffle_select_recorded_rows():
    from sedac.bench.prompts import describe, prompt_messages, record_order

    texts = _texts("builtin-tasks")
    plain = describe(PromptSet(source="builtin-tasks", n=3, skip=5))
    assert plain["rows"] == [5, 6, 7]
    order = record_order(len(texts), 11)
    assert sorted(order) == list(range(len(texts))) and order != list(range(len(texts)))
    ps = PromptSet(source="builtin-tasks", n=4, shuffle_seed=11, skip=230)
    assert describe(ps)["rows"] == order[230:234]
    assert [m[0]["content"] for m in prompt_messages(ps)] == [texts[i] for i in order[230:234]]
    with pytest.raises(DataError, match="after skipping 660 of its 660 records"):
        prompt_messages(PromptSet(source="builtin-tasks", n=1, skip=660))


def test_heldout_prompts_are_exactly_those_calibration_did_not_draw(tiny_llama, monkeypatch):
    """`sedac calibrate --data builtin-tasks --mode generate --seed S` uses the first grid+n records of
    record_order(., S); a bench with shuffle_seed=S, skip=grid+n gets the following ones."""
    from transformers import AutoTokenizer

    import sedac.collect.hf
    from sedac.bench.prompts import describe
    from sedac.calibration.config import CalibrateConfig
    from sedac.calibration.data import load_cal_sequences

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    monkeypatch.setattr(sedac.collect.hf, "generate", lambda m, t, ids, *a, **k: [[] for _ in ids])
    cfg = CalibrateConfig(probe="unused", data="builtin-tasks", mode="generate", n_sequences=200,
                          grid_sequences=6, seed=3, max_length=1024, new_tokens=8, chat=False)
    seqs, _ = load_cal_sequences(cfg, None, tok)
    texts = _texts("builtin-tasks")
    enc = {i: tuple(tok(t, add_special_tokens=False)["input_ids"]) for i, t in enumerate(texts)}
    cal_rows = {i for i, ids in enc.items() if ids in {tuple(s.ids) for s in seqs}}
    assert len(seqs) == 206 and len(cal_rows) == 206
    rows = describe(PromptSet(source="builtin-tasks", n=34, shuffle_seed=3, skip=206))["rows"]
    assert len(rows) == 34 and not set(rows) & cal_rows and len(cal_rows | set(rows)) == 240
