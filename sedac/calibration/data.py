"""Calibration sequences: the same dataset loading as ``sedac collect`` (:mod:`sedac.collect.data`).

* ``corpus``: the dataset's texts are tokenized, joined and cut into ``--max-length`` chunks; every
  position with a next token is scored. Only full-length chunks are used (equal lengths: no padding).
* ``generate``: one prompt per record; the full model continues it greedily for ``--new-tokens``
  and only the positions predicting generated tokens are scored. Risk is then measured
  teacher-forced along the FULL model's greedy continuation: it is not the distribution a skipping
  model produces when it generates freely (its own earlier changes feed back), nor sampling at
  temperature > 0. The certificate is about this teacher-forced quantity, on data exchangeable with
  ``--data``.

The chunks/prompts are shuffled with ``--seed`` before the first ``grid_sequences + n_sequences``
are taken, so the units are a random sample of the dataset's units.
"""

from __future__ import annotations

import random
import warnings

from sedac.calibration.risk import CalSequence
from sedac.errors import DataError


def load_cal_sequences(cfg, model, tokenizer, progress=None) -> tuple[list[CalSequence], str]:
    """``(sequences, data_fingerprint)`` for a :class:`~sedac.calibration.config.CalibrateConfig`."""
    from sedac.collect.data import build_sequences, load_records, pick_field, render_texts
    from sedac.provenance import stable_hash

    need = cfg.grid_sequences + cfg.n_sequences
    ds = load_records(cfg.data, cfg.split)
    field = pick_field(list(ds.column_names), cfg.field, cfg.data)
    gen = cfg.mode == "generate"
    chat = cfg.chat if cfg.chat is not None else (gen and getattr(tokenizer, "chat_template", None) is not None)
    texts = render_texts(ds, field, tokenizer, chat, generation_prompt=gen)
    rng = random.Random(cfg.seed)
    if gen:
        rng.shuffle(texts)
        texts = texts[:need]
    seqs = build_sequences(texts, tokenizer, cfg.mode, cfg.max_length, cfg.new_tokens, None,
                           lines=cfg.data.endswith(".txt"))
    if not gen:
        seqs = [s for s in seqs if len(s.ids) == cfg.max_length]
        rng.shuffle(seqs)
        seqs = seqs[:need]
    if len(seqs) < cfg.grid_sequences + 2:
        raise DataError(f"--data {cfg.data!r} yields only {len(seqs)} {cfg.mode} sequences of --max-length "
                        f"{cfg.max_length}; need at least --grid-sequences + 2 = {cfg.grid_sequences + 2}")
    if len(seqs) < need:
        warnings.warn(f"--data {cfg.data!r} yields {len(seqs)} sequences, fewer than --grid-sequences + "
                      f"--n-sequences = {need}; using all of them", stacklevel=2)
    if not gen:
        out = [CalSequence(list(s.ids), 0) for s in seqs]
    else:
        from sedac.collect.hf import generate

        out = []
        for i in range(0, len(seqs), cfg.batch_size):
            chunk = seqs[i: i + cfg.batch_size]
            conts = generate(model, tokenizer, [s.ids for s in chunk], cfg.new_tokens, 0.0, cfg.seed)
            for s, c in zip(chunk, conts):
                out.append(CalSequence(list(s.ids) + list(c), len(s.ids) - 1))
            if progress is not None:
                progress(len(chunk))
    fp = stable_hash([[s.ids, s.first_scored] for s in out], length=32)
    return out, fp
