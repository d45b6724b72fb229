"""Decode throughput in real vLLM: plain vLLM vs sedac (never firing / a band skipped every step), one run.

    python scripts/vllm_throughput.py --out OUT.json                  # Qwen2.5-7B shape, bf16, GPU
    python scripts/vllm_throughput.py --shape tiny --out OUT.json     # the tiny test model (mechanics check)

The model is a locally written ``config.json`` with random weights (``load_format="dummy"``: vLLM fills
them with random values, never zeros) and no tokenizer (``skip_tokenizer_init``; prompts are token ids).
Engines, each compiled with CUDA graphs (sizes = the batch sizes), one at a time, in subprocesses:

* ``plain``: the plugin disabled (``VLLM_PLUGINS=""``); the worker reports vLLM's own model class;
* ``band8`` / ``band14``: sedac with a random probe whose band is the last 8 / 14 of 28 layers, static
  mode. The score threshold lives on the device, so one compiled engine serves two settings through
  ``sedac_set``: ``never`` (threshold 1.0: the probe, decision and skip op run, nothing is skipped)
  and ``always`` (threshold 0.0: every band MLP is skipped every step). Skip counters are read after
  each setting and reported.

Each (setting, batch) is timed over ``--repeats`` ``generate`` calls (greedy, ``--tokens`` new tokens per
request, EOS ignored, prefix caching off) after one warm-up; the median tok/s is reported with the
spread. Ratios are against ``plain`` of the same run.

Two schedules:

* ``--interleave`` (default): all engines live at once in ONE driver process (each engine core a spawned
  process with its own ``VLLM_PLUGINS``, ``gpu_memory_utilization`` split between them), and every round
  times each (engine, setting, batch) once, in an order rotated by one each round. Slow periods of the
  machine then hit every variant alike, and ``band<k>_<setting>_paired_over_plain_b<B>`` is the median over
  rounds of the same-round ratio; ``never_pooled_paired_over_plain_b<B>`` pools every band's never-firing
  pairs (the same rule) with a 90 % bootstrap interval. Why: run 4 on an H200 (sequential, bracketed)
  measured two plain engines of the same run 2.7 % apart at batch 32 (median 5,628 vs 5,785 tok/s),
  larger than the effect measured.
* ``--sequential``: one engine at a time, each in its own process; a second plain engine runs after the
  sedac ones (``plain_end``; ``--no-bracket`` skips it), the baseline is the median of both plain engines'
  repeats, and ``plain_end_over_start_b<B>`` shows the drift between them.

``--table JSON`` reprints the table of a finished run (ratios recomputed from its raw repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

QWEN7B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584, intermediate_size=18944,
              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
              max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
              tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645,
              sliding_window=None, use_sliding_window=False, max_window_layers=28, attention_dropout=0.0)


def make_model(shape: str, root: Path) -> Path:
    d = root / f"model-{shape}"
    d.mkdir(parents=True, exist_ok=True)
    if shape == "qwen2.5-7b":
        (d / "config.json").write_text(json.dumps(QWEN7B, indent=1))
    elif shape == "tiny":
        from sedac.testing.tiny import make_tiny_model

        make_tiny_model(d, arch="llama")
    else:
        raise SystemExit(f"unknown --shape {shape!r} (qwen2.5-7b | tiny)")
    return d


def band_engine(model: Path, k: int, root: Path) -> dict:
    """The sedac engine of band ``k``: a random probe on the last ``k`` layers, threshold on the device, run
    ``never`` (1.0: nothing skipped) and ``always`` (0.0: every band MLP skipped)."""
    return dict(name=f"band{k}", plugins=True, probe=make_probe(model, k, root), sedac={"threshold": 1.0},
                settings={"never": 1.0, "always": 0.0})


def make_probe(model: Path, k: int, root: Path) -> str:
    from sedac.adapter import fingerprint_from_config
    from sedac.testing.probes import random_probe

    cfg = json.loads((model / "config.json").read_text())
    n = int(cfg["num_hidden_layers"])
    k = min(k, n - 1)
    return str(random_probe(fingerprint_from_config(cfg), layer=n - k, bands=[(n - k, n - 1)], seed=k)
               .save(root / f"probe-band{k}.safetensors"))


# ---------------------------------------------------------------------------------------- engine side
def _start(spec: dict, e: dict):
    """``(llm, {"engine_start_s", "model_class"})`` for engine spec ``e`` (``probe``/``sedac`` absent: plain)."""
    from vllm import LLM

    from sedac.runtime import vllm_plugin as vp

    kw = dict(spec["engine"])
    kw.update(vp.engine_kwargs(e.get("probe"), **e.get("sedac", {})))
    t0 = time.perf_counter()
    llm = LLM(spec["model"], **kw)
    return llm, {"engine_start_s": round(time.perf_counter() - t0, 1),
                 "model_class": llm.collective_rpc("sedac_model_class")[0]}


def engine_main(spec: dict) -> dict:
    from sedac.runtime import vllm_plugin as vp

    llm, out = _start(spec, spec)
    settings = spec.get("settings") or {"plain": None}
    for name, score in settings.items():
        if score is not None:
            llm.collective_rpc("sedac_set", kwargs={"threshold": score})
        res = {}
        for b in spec["batches"]:
            _timed(llm, spec, b)  # warm-up
            if score is not None:
                llm.collective_rpc("sedac_reset")
            tps = [_timed(llm, spec, b) for _ in range(spec["repeats"])]
            res[f"b{b}"] = _summary(tps)
            if score is not None:
                res[f"b{b}"]["skip_rate"] = vp.engine_stats(llm)["all"]["rate"]
        out[name] = res
        print(name, json.dumps(res), flush=True)
    return out


def _timed(llm, spec: dict, b: int) -> float:
    """One ``generate`` of ``b`` requests; returns its tok/s."""
    from vllm import SamplingParams

    vocab, n = spec["vocab"], spec["prompt_len"]
    prompts = [{"prompt_token_ids": [(7 + 31 * i + 13 * j) % (vocab - 10) + 5 for j in range(n)]} for i in range(b)]
    sp = SamplingParams(temperature=0.0, max_tokens=spec["tokens"], ignore_eos=True, detokenize=False)
    t = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t
    assert sum(len(o.outputs[0].token_ids) for o in outs) == b * spec["tokens"]
    return b * spec["tokens"] / dt


def _summary(tps: list[float]) -> dict:
    return {"tok_s": statistics.median(tps), "min": min(tps), "max": max(tps), "n": len(tps),
            "all": [round(x, 2) for x in tps]}


def interleaved_main(spec: dict) -> dict:
    """All engines of ``spec["engines"]`` at once; each round times every (engine, setting, batch) once."""
    from sedac.runtime import vllm_plugin as vp

    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"  # each engine core reads VLLM_PLUGINS afresh
    llms, out, items = {}, {}, []
    for e in spec["engines"]:
        if e["plugins"]:
            os.environ.pop("VLLM_PLUGINS", None)
        else:
            os.environ["VLLM_PLUGINS"] = ""
        llms[e["name"]], out[e["name"]] = _start(spec, e)
        print(f"engine {e['name']} up: {out[e['name']]}", flush=True)
        items += [(e["name"], st, score, b) for st, score in e["settings"].items() for b in spec["batches"]]
    tps = {it[:2] + (it[3],): [] for it in items}
    counts = {k: [0, 0] for k in tps}
    for r in range(spec["repeats"] + 1):  # round 0 = warm-up, not timed
        k = r % len(items)
        for name, st, score, b in items[k:] + items[:k]:
            llm = llms[name]
            if score is not None:
                llm.collective_rpc("sedac_set", kwargs={"threshold": score})
                llm.collective_rpc("sedac_reset")
            x = _timed(llm, spec, b)
            if r == 0:
                continue
            tps[(name, st, b)].append(x)
            if score is not None:
                a = vp.engine_stats(llm)["all"]
                counts[(name, st, b)][0] += a["skipped"]
                counts[(name, st, b)][1] += a["evaluated"]
        print(f"round {r} done", flush=True)
    for (name, st, b), xs in tps.items():
        res = _summary(xs)
        sk, ev = counts[(name, st, b)]
        if name != "plain":
            res["skip_rate"] = sk / ev if ev else 0.0
        out[name].setdefault(st, {})[f"b{b}"] = res
    return out


def run_engine(name: str, spec: dict, root: Path, plugins: bool, timeout: int, flag: str = "--engine") -> dict:
    sp, op, lp = root / f"{name}.spec.json", root / f"{name}.out.json", root / f"{name}.log"
    sp.write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.pop("SEDAC_VLLM_CONFIG", None)
    if plugins:
        env.pop("VLLM_PLUGINS", None)
    else:
        env["VLLM_PLUGINS"] = ""
    t0 = time.time()
    print(f"[throughput] engine {name} (log {lp})", flush=True)
    with open(lp, "w") as log:
        rc = subprocess.run([sys.executable, __file__, flag, str(sp), "--out", str(op)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0 or not op.exists():
        tail = "\n".join(lp.read_text().splitlines()[-30:])
        raise SystemExit(f"engine {name} failed (rc={rc}):\n{tail}")
    out = json.loads(op.read_text())
    start = out.get("engine_start_s") or {k: v["engine_start_s"] for k, v in out.items()}
    print(f"[throughput] engine {name} done in {time.time() - t0:.0f} s (start {start} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-7b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--bands", type=int, nargs="+", default=[8, 14])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sequential", dest="interleave", action="store_false",
                    help="one engine at a time (default: all engines at once, timed in interleaved rounds)")
    ap.add_argument("--no-bracket", dest="bracket", action="store_false",
                    help="--sequential only: skip the second plain engine after the sedac ones (default: run it; "
                    "the baseline pools both)")
    ap.add_argument("--work", default="/tmp/sedac-vllm-throughput")
    ap.add_argument("--engine-timeout", type=int, default=300)
    ap.add_argument("--out", help="JSON to write (required unless --table)")
    ap.add_argument("--table", metavar="JSON", help="only print the table of a finished run (its JSON, or an "
                    "evidence file holding it under 'throughput'), ratios recomputed from the raw repeats")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--engines", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.table:
        r = json.loads(Path(a.table).read_text())
        r = r.get("throughput", r)
        set_ratios(r)
        print(format_table(r))
        return
    if not a.out:
        ap.error("--out is required")
    if a.engine or a.engines:
        fn = engine_main if a.engine else interleaved_main
        Path(a.out).write_text(json.dumps(fn(json.loads(Path(a.engine or a.engines).read_text()))))
        return
    import torch

    root = Path(a.work)
    root.mkdir(parents=True, exist_ok=True)
    model = make_model(a.shape, root)
    cuda = torch.cuda.is_available()
    engine = dict(max_model_len=a.prompt_len + a.tokens + 16, max_num_seqs=max(a.batches), seed=0,
                  enable_prefix_caching=False, skip_tokenizer_init=True, enforce_eager=False)
    if a.shape != "tiny":
        engine["load_format"] = "dummy"
    if cuda:
        engine.update(dtype="bfloat16", attention_backend="TRITON_ATTN", kv_cache_memory_bytes=8 << 30,
                      compilation_config={"cudagraph_capture_sizes": sorted(set(a.batches))})
    else:
        engine.update(dtype="float32")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    base = dict(model=str(model), engine=engine, vocab=vocab, batches=a.batches, tokens=a.tokens,
                prompt_len=a.prompt_len, repeats=a.repeats)
    result = {"card": torch.cuda.get_device_name(0) if cuda else "cpu", "shape": a.shape, "tokens": a.tokens,
              "prompt_len": a.prompt_len, "repeats": a.repeats, "batches": a.batches, "engine": engine}
    if a.interleave:
        result["schedule"] = "interleaved"
        engines = [dict(name="plain", plugins=False, settings={"plain": None})]
        engines += [band_engine(model, k, root) for k in a.bands]
        if cuda:  # every engine resident at once: split the memory the startup check asks for
            base["engine"] = dict(engine, gpu_memory_utilization=round(0.85 / len(engines), 3))
        out = run_engine("interleaved", dict(base, engines=engines), root, plugins=True,
                         timeout=a.engine_timeout * (len(engines) + 1), flag="--engines")
        check_classes(out)
        result.update(out, bands_done=list(a.bands))
        set_ratios(result)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(format_table(result))
        return
    result["schedule"] = "sequential"
    plain = run_engine("plain", base, root, plugins=False, timeout=a.engine_timeout)
    check_classes({"plain": plain})
    result["plain"] = plain
    result["bands_done"] = []
    for k in a.bands:
        out = run_engine(f"band{k}", dict(base, **band_engine(model, k, root)), root, plugins=True,
                         timeout=a.engine_timeout)
        check_classes({f"band{k}": out})
        result[f"band{k}"] = out
        result["bands_done"].append(k)
        set_ratios(result)
        Path(a.out).write_text(json.dumps(result, indent=1))  # after every engine: a timeout keeps what ran
    if a.bracket:  # plain again after the sedac engines: drift shows, and the baseline pools both plain runs
        end = run_engine("plain_end", base, root, plugins=False, timeout=a.engine_timeout)
        check_classes({"plain": end})
        result["plain_start"], result["plain_end"] = plain, end
        pooled = {}
        for b in a.batches:
            pooled[f"b{b}"] = _summary(plain["plain"][f"b{b}"]["all"] + end["plain"][f"b{b}"]["all"])
            result[f"plain_end_over_start_b{b}"] = round(end["plain"][f"b{b}"]["tok_s"] / plain["plain"][f"b{b}"]["tok_s"], 4)
        result["plain"] = {"model_class": plain["model_class"], "plain": pooled, "pooled_from": ["plain", "plain_end"]}
        set_ratios(result)
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(format_table(result))


def check_classes(out: dict) -> None:
    """The baseline runs vLLM's own model class (sedac truly off); every band engine runs sedac's."""
    for name, o in out.items():
        sedac_cls = "SedacQwen2Model" in o["model_class"] or "SedacLlamaModel" in o["model_class"]
        assert sedac_cls == (name != "plain") and not (name == "plain" and o["model_class"].startswith("sedac")), \
            (name, o["model_class"])


def set_ratios(r: dict) -> None:
    """``band<k>_<setting>_over_plain_b<B>``: each finished sedac engine's median tok/s over the baseline's."""
    for k in r["bands_done"]:
        for st in ("never", "always"):
            for b in r["batches"]:
                x, ref = r[f"band{k}"][st][f"b{b}"], r["plain"]["plain"][f"b{b}"]
                r[f"band{k}_{st}_over_plain_b{b}"] = round(x["tok_s"] / ref["tok_s"], 4)
                if r.get("schedule") == "interleaved":  # round i of every variant ran in the same round
                    r[f"band{k}_{st}_paired_over_plain_b{b}"] = round(statistics.median(_pairs(r, k, st, b)), 4)
    if r.get("schedule") == "interleaved" and r["bands_done"]:
        for b in r["batches"]:
            r[f"never_pooled_paired_over_plain_b{b}"] = pooled_never(r, b)


def _pairs(r: dict, k: int, setting: str, b: int) -> list[float]:
    """Band ``k``'s tok/s over plain's, round by round (interleaved runs: round i of each ran together)."""
    return [a / c for a, c in zip(r[f"band{k}"][setting][f"b{b}"]["all"], r["plain"]["plain"][f"b{b}"]["all"])]


def pooled_never(r: dict, b: int, draws: int = 4000) -> dict:
    """Every band's never-firing rounds are the same rule (nothing skipped), so their same-round ratios pool:
    the median over all of them and a 90 % percentile-bootstrap interval (fixed seed: reprinting gives the same)."""
    xs = [q for k in r["bands_done"] for q in _pairs(r, k, "never", b)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(draws))
    return {"median": round(statistics.median(xs), 4), "ci90": [round(boot[int(0.05 * draws)], 4),
            round(boot[int(0.95 * draws) - 1], 4)], "pairs": len(xs)}


def format_table(r: dict) -> str:
    paired = r.get("schedule") == "interleaved"
    rows = [f"| variant | batch | tok/s (median) | spread | x plain |{' paired x plain |' if paired else ''} skip rate |",
            "|---|---|---|---|---|---|" + ("---|" if paired else "")]
    for b in r["batches"]:
        p = r["plain"]["plain"][f"b{b}"]
        pooled = "pooled_from" in r["plain"]
        rows.append(f"| plain vLLM{' (both engines)' if pooled else ''} | {b} | {p['tok_s']:.1f} | "
                    f"{p['min']:.1f}-{p['max']:.1f} | 1.000 |{' - |' if paired else ''} - |")
        for key in (("plain_start", "plain_end") if pooled else ()):
            v = r[key]["plain"][f"b{b}"]
            rows.append(f"| plain vLLM, {key.split('_')[1]} | {b} | {v['tok_s']:.1f} | {v['min']:.1f}-{v['max']:.1f} | "
                        f"{v['tok_s'] / p['tok_s']:.3f} | - |")
        for key in (f"band{k}" for k in r.get("bands_done", [])):
            for s in ("never", "always"):
                v = r[key][s][f"b{b}"]
                pr = f" {r[f'{key}_{s}_paired_over_plain_b{b}']:.3f} |" if paired else ""
                rows.append(f"| sedac {key} {s} | {b} | {v['tok_s']:.1f} | {v['min']:.1f}-{v['max']:.1f} | "
                            f"{r[f'{key}_{s}_over_plain_b{b}']:.3f} |{pr} {v['skip_rate']:.3f} |")
    pools = [(b, r[f"never_pooled_paired_over_plain_b{b}"]) for b in r["batches"]
              if f"never_pooled_paired_over_plain_b{b}" in r]
    rows += [""] if pools else []
    for b, pn in pools:
        rows.append(f"never-firing, batch {b}, all bands pooled ({pn['pairs']} same-round pairs): "
                    f"paired x plain {pn['median']:.3f}, 90 % bootstrap interval {pn['ci90'][0]:.3f}-{pn['ci90'][1]:.3f}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
