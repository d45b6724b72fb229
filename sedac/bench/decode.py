"""`sedac bench decode`: decode-step speed of a model *shape* with and without sedac's MLP skipping.

What it builds (no checkpoint needed): the decoder shape of a recipe (``recipes/shapes/*.yaml``) with
**explicitly randomised** weights (``normal_(0, 0.02)``; zero weights read faster through memory
compression and make timings lie). One decode step = embedding row lookup, per layer RMSNorm ->
QKV (bias) -> KV-cache write at a fixed slot -> attention of the new token over a KV cache of fixed
length ``kv_len`` (``F.scaled_dot_product_attention`` with ``enable_gqa``; RoPE omitted, it is
elementwise and identical in every variant) -> O proj -> RMSNorm -> MLP, then final RMSNorm and
**the LM head (included in every variant)**. Each step is captured in ONE CUDA graph and replayed.

Variants (all in one run, same weights, same card):

``baseline``         plain PyTorch ops (the ``F.linear`` calls HF's modules make), sedac absent.
``sedac b=K f=F``    the last ``K`` layers form the band; a probe (random GEMV ``[B,H]·[H]`` + bias)
                     at the band's first layer decides on the device; the band's MLPs run
                     ``torch.ops.sedac.skip_mlp`` (Triton on CUDA). The decision is driven to fire
                     on exactly a fraction ``F`` of steps through a device-side threshold schedule
                     (``thr[step % 4]``, a step counter incremented inside the graph): the same
                     graph serves firing and non-firing steps, with no host sync.
``token 50%``        batch > 1, ``token`` policy: half of the rows fire on every step.

Ideal speedup: batch 1 by bytes (weights + KV cache read once), batch > 1 by FLOPs (and by bytes,
shown too). ``achieved/ideal`` = measured speedup / ideal speedup.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path

from sedac.errors import ConfigError

SHAPES_DIR = Path(__file__).resolve().parents[2] / "recipes" / "shapes"
STEPS_PER_CYCLE = 4  #: the threshold schedule repeats every 4 steps (fractions in quarters)


@dataclass
class ShapeConfig:
    """A decoder shape (weights are random): maps 1:1 onto ``recipes/shapes/*.yaml``."""

    name: str  #: recipe name
    hidden: int  #: model width H
    intermediate: int  #: MLP width I
    layers: int  #: decoder layers
    heads: int  #: query heads
    kv_heads: int  #: key/value heads (GQA)
    head_dim: int  #: per-head width
    vocab: int  #: LM-head rows
    qkv_bias: bool = True  #: QKV projection has a bias (Qwen2)

    def __post_init__(self) -> None:
        for f in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            if int(getattr(self, f)) <= 0:
                raise ConfigError(f"shape key {f!r} must be positive, got {getattr(self, f)}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"shape key 'heads' ({self.heads}) must be a multiple of 'kv_heads' ({self.kv_heads})")

    @property
    def mlp_params(self) -> int:
        return 3 * self.hidden * self.intermediate

    @property
    def attn_params(self) -> int:
        return self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden


def load_shape(name_or_path: str) -> ShapeConfig:
    """Load a shape recipe by name (``recipes/shapes/NAME.yaml``) or path."""
    import yaml

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SHAPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SHAPES_DIR.glob("*.yaml"))
        raise ConfigError(f"--shape {name_or_path!r}: no recipe at {path} (known: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {f.name for f in fields(ShapeConfig)}
    if set(data) - allowed:
        raise ConfigError(f"{path}: unknown keys {sorted(set(data) - allowed)}")
    return ShapeConfig(**data)


@dataclass
class DecodeBenchConfig:
    """Resolved configuration of one ``sedac bench decode`` run."""

    shape: str = "qwen2.5-7b"  #: --shape: recipe name or path
    backend: str = "torch"  #: --backend: only "torch" (PyTorch modules + CUDA graphs + Triton)
    batches: list[int] = field(default_factory=lambda: [1, 32])  #: --batch
    kv_len: int = 2048  #: --kv-len: KV-cache length attended by every decode step
    bands: list[int] = field(default_factory=lambda: [8, 14])  #: --band: band = last K layers
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])  #: --fraction (quarters)
    repeats: int = 15  #: --repeats: timed repeats (median reported)
    cycles: int = 8  #: --cycles: 4-step cycles per timed repeat
    device: str = "cuda"  #: --device
    graphs: bool = True  #: --graphs/--no-graphs: capture each step in one CUDA graph (CUDA only)
    seed: int = 0  #: --seed: weight and probe RNG seed
    compile: bool = False  #: --compile: torch.compile the non-MLP tensor functions (all variants alike)
    attn: str = "sdpa"  #: --attn: "sdpa" (F.scaled_dot_product_attention, enable_gqa) or "bmm" (grouped matmuls)
    soft: bool = False  #: --soft: soft-skip variants (every MLP sparse at --level), eager and compiled
    levels: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.4, 0.5])  #: --level: soft sparsity of x and h

    def __post_init__(self) -> None:
        if self.attn not in ("sdpa", "bmm"):
            raise ConfigError(f"--attn must be 'sdpa' or 'bmm', got {self.attn!r}")
        if self.backend != "torch":
            raise ConfigError(f"--backend must be 'torch' (vLLM has no GPU build here), got {self.backend!r}")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError("--batch must be >= 1")
        if self.kv_len < 1 or self.repeats < 1 or self.cycles < 1:
            raise ConfigError("--kv-len, --repeats and --cycles must be >= 1")
        if any(not 0.0 <= lv < 1.0 for lv in self.levels):
            raise ConfigError(f"--level must be in [0, 1), got {self.levels}")
        for f in self.fractions:
            if not 0.0 <= f <= 1.0 or abs(f * STEPS_PER_CYCLE - round(f * STEPS_PER_CYCLE)) > 1e-9:
                raise ConfigError(f"--fraction must be a multiple of 1/{STEPS_PER_CYCLE} in [0, 1], got {f}")


def _setup(cfg: DecodeBenchConfig, shape: ShapeConfig):
    """``(device, graphs, dtype, out)`` shared by both benchmarks; ``out`` starts with provenance and card."""
    import torch

    from sedac.provenance import provenance

    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible (use --device cpu for a smoke run)")
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out = {"provenance": provenance(cfg, shape=shape, card=card, torch=torch.__version__), "card": card}
    return dev, cfg.graphs and dev.type == "cuda", torch.bfloat16, out


def run_decode_bench(cfg: DecodeBenchConfig, progress=print) -> dict:
    """Run every variant; returns a JSON-able result (provenance, ceilings, MLP check, step table)."""
    import torch

    from sedac.bench import decode_model as dm

    shape = load_shape(cfg.shape)
    for b in cfg.bands:
        if not 1 <= b < shape.layers:
            raise ConfigError(f"--band {b} must be in [1, {shape.layers - 1}]")
    dev, graphs, dtype, out = _setup(cfg, shape)
    if dev.type == "cuda":
        from sedac.runtime.mlp_ops import ensure_cuda_kernels

        ensure_cuda_kernels()
        progress("measuring ceilings (copy bandwidth, bf16 matmul rate)")
        out["ceilings"] = dm.measure_ceilings(dev)
        progress("MLP kernel check vs cuBLAS (M = batches)")
        out["mlp"] = [dm.mlp_microbench(shape, n, dev, dtype, cfg.seed) for n in cfg.batches]
    model = dm.build_model(shape, dev, dtype, cfg.seed, cfg.kv_len, max(cfg.batches))
    attn = cfg.attn if model.attn_impl != "bmm" else "bmm"  # sdpa without enable_gqa support -> bmm
    out["attention"] = "sdpa(enable_gqa)" if attn == "sdpa" else "bmm (grouped matmuls)"
    fns = dm.Fns(cfg.compile, attn)
    rows = []
    for bsz in cfg.batches:
        variants = [("baseline", None)]
        for band in cfg.bands:
            if bsz == 1:
                decision_only = dm.Control.steps(band, 0.0, bsz, "batch")
                decision_only.apply = False
                variants.append((f"decision only (probe, PyTorch MLP) band={band}", decision_only))
                variants += [(f"sedac band={band} steps={f:.0%}", dm.Control.steps(band, f, bsz, "batch"))
                             for f in cfg.fractions]
            else:
                variants += [(f"sedac band={band} batch-policy steps=0%", dm.Control.steps(band, 0.0, bsz, "batch")),
                             (f"sedac band={band} token rows=50%", dm.Control.rows(band, 0.5, bsz)),
                             (f"sedac band={band} batch-policy steps=100%", dm.Control.steps(band, 1.0, bsz, "batch"))]
        variants.append(("baseline (again)", None))
        for name, ctl in variants:
            if ctl is not None:
                ctl = ctl.to(shape, dev, dtype, cfg.seed)
            times = dm.time_steps(model, bsz, ctl, graphs, cfg.repeats, cfg.cycles * STEPS_PER_CYCLE, fns)
            row = {"batch": bsz, "variant": name, "ms_median": statistics.median(times),
                   "ms_min": min(times), "ms_max": max(times)}
            row.update(dm.ideal(shape, bsz, cfg.kv_len, ctl))
            rows.append(row)
            progress(f"batch {bsz:>3} {name:<42} {row['ms_median']:8.3f} ms/step")
        base = statistics.median([r["ms_median"] for r in rows if r["batch"] == bsz and r["variant"].startswith("baseline")])
        mlp_ms = {m["rows"]: dm.best_dense_ms(m["ms"]) for m in out.get("mlp", [])}
        for r in rows:
            if r["batch"] == bsz:
                r["speedup"] = base / r["ms_median"]
                r["achieved_over_ideal"] = r["speedup"] / r["ideal_speedup"]
                if bsz in mlp_ms:  # diagnostic: remove the measured cuBLAS time of the skipped MLPs
                    r["ideal_by_measured_mlp"] = base / (base - r["skipped_mlps_per_step"] * mlp_ms[bsz])
    out["steps"] = rows
    out["check"] = dm.check_outputs(model, shape, dev, dtype, cfg.seed)
    return out


def run_soft_bench(cfg: DecodeBenchConfig, progress=print) -> dict:
    """Soft-skip variants (``--soft``): MLP microbenchmarks, then decode steps eager and compiled."""
    import torch

    from sedac.bench import decode_model as dm
    from sedac.bench import decode_soft as ds

    shape = load_shape(cfg.shape)
    dev, graphs, dtype, out = _setup(cfg, shape)
    if dev.type == "cuda":
        from sedac.runtime.kernels import register

        register()
        progress("MLP microbenchmarks: skip kernel keep-all vs cuBLAS (M = 1, 32); soft kernels per level")
        out["mlp_skip"] = [dm.mlp_microbench(shape, n, dev, dtype, cfg.seed) for n in (1, 32)]
        out["mlp_soft"] = [ds.mlp_soft_microbench(shape, n, cfg.levels, dev, dtype, cfg.seed) for n in cfg.batches]
    model = dm.build_model(shape, dev, dtype, cfg.seed, cfg.kv_len, max(cfg.batches))
    ds.prepare(model)
    attn = cfg.attn if model.attn_impl != "bmm" else "bmm"
    rows = []
    for mode in ("eager", "compiled") if dev.type == "cuda" else ("eager",):
        fns = dm.Fns(mode == "compiled", attn)
        for bsz in cfg.batches:
            tok = torch.randint(0, shape.vocab, (bsz,), device=dev, generator=torch.Generator(dev).manual_seed(bsz))
            variants = [("baseline", None)] + [(f"soft {lv:g}", lv) for lv in cfg.levels] + [("baseline (again)", None)]
            block = []
            for name, lv in variants:
                ctl = None
                if lv is not None:
                    ctl = ds.calibrate(model, ds.SoftControl(lv, shape.layers, bsz).to(dev), tok, fns)
                times = dm.time_steps(model, bsz, ctl, graphs, cfg.repeats, cfg.cycles * STEPS_PER_CYCLE, fns, tok=tok)
                wf = statistics.mean(ctl.weight_fraction) if ctl is not None else 1.0
                row = {"mode": mode, "batch": bsz, "variant": name.split(" (")[0], "level": lv,
                       "ms_median": statistics.median(times), "ms_min": min(times), "ms_max": max(times),
                       "weight_fraction": wf,
                       "ideal_speedup": ds.step_ideal(shape, bsz, cfg.kv_len, ctl.weight_fraction) if ctl else 1.0}
                block.append(row)
                progress(f"{mode:<8} batch {bsz:>3} {name:<18} {row['ms_median']:8.3f} ms/step  weights read {wf:.3f}")
            base = statistics.median([r["ms_median"] for r in block if r["level"] is None])
            for r in block:
                r["speedup"] = base / r["ms_median"]
                r["achieved_over_ideal"] = r["speedup"] / r["ideal_speedup"]
            rows += block
    out["soft_steps"] = rows
    tok = torch.randint(0, shape.vocab, (1,), device=dev)
    base = dm.step(model, tok, None).double()
    dense = ds.calibrate(model, ds.SoftControl(0.0, shape.layers, 1).to(dev), tok, dm.Fns(False))
    got = dm.step(model, tok, dense).double()
    out["check"] = {"soft_dense_vs_baseline": ((got - base).norm() / base.norm()).item()}
    return out


def format_soft_table(result: dict) -> str:
    """Markdown tables of a ``--soft`` run (MLP level, then step level)."""
    lines = [f"card: {result['card']}", "", "| M | level | MLP us | dense best us | weights read | speedup | ideal "
             "| realised/ideal | GB/s | rel.err vs fp64 |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result.get("mlp_soft", []):
        for lv, r in m["levels"].items():
            lines.append(f"| {m['rows']} | {lv} | {m['ms'][f'soft {float(lv)}'] * 1e3:.1f} | {m['dense_best_ms'] * 1e3:.1f} "
                         f"| {r['weight_fraction']:.3f} | {r['speedup']:.3f} | {r['ideal']:.3f} | "
                         f"{r['realised_over_ideal']:.3f} | {r['GBps']:.0f} | {r['rel_err_vs_fp64']:.1e} |")
    for m in result.get("mlp_skip", []):
        lines.append(f"\nskip kernel keep-all M={m['rows']}: " + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in m["ms"].items())
                     + f"; vs best cuBLAS = {m['speed_vs_best_torch']:.3f}; configs {m['configs']}")
    lines += ["", "| mode | batch | variant | ms/step (median) | spread | weights read | speedup | ideal (bytes) "
              "| achieved/ideal |", "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in result["soft_steps"]:
        lines.append(f"| {r['mode']} | {r['batch']} | {r['variant']} | {r['ms_median']:.3f} | {r['ms_min']:.3f}-"
                     f"{r['ms_max']:.3f} | {r['weight_fraction']:.3f} | {r['speedup']:.3f} | {r['ideal_speedup']:.3f} "
                     f"| {r['achieved_over_ideal']:.3f} |")
    lines.append(f"output check: {result['check']}")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """Markdown table of the step timings (what docs/perf.md records)."""
    compiled = result["provenance"]["config"].get("compile")
    lines = [f"card: {result['card']}; attention: {result.get('attention')}; torch.compile: {compiled}", "",
             "| batch | variant | ms/step (median) | spread (min-max) | speedup | ideal | ideal basis | achieved/ideal "
             "| ideal by measured MLP time |",
             "|---:|---|---:|---|---:|---:|---|---:|---:|"]
    for r in result["steps"]:
        lines.append(f"| {r['batch']} | {r['variant']} | {r['ms_median']:.3f} | {r['ms_min']:.3f}-{r['ms_max']:.3f} | "
                     f"{r['speedup']:.3f} | {r['ideal_speedup']:.3f} | {r['ideal_basis']} | {r['achieved_over_ideal']:.3f} | "
                     f"{r.get('ideal_by_measured_mlp', float('nan')):.3f} |")
    for m in result.get("mlp", []):
        lines.append("")
        lines.append(f"MLP M={m['rows']}: " + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in m["ms"].items())
                     + f"; triton/best-torch speed = {m['speed_vs_best_torch']:.3f}; max rel err = {m['rel_err']:.2e}")
    if "ceilings" in result:
        c = result["ceilings"]
        lines.append(f"\nceilings: copy {c['copy_GBps']:.0f} GB/s, bf16 matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
    lines.append(f"output check: {result['check']}")
    return "\n".join(lines)


def decode_command(shape: str = "qwen2.5-7b", backend: str = "torch", batch: list[int] = [1, 32],  # noqa: B006
                   kv_len: int = 2048, band: list[int] = [8, 14], fraction: list[float] = [0.0, 0.25, 0.5, 1.0],  # noqa: B006
                   repeats: int = 15, cycles: int = 8, device: str = "cuda", graphs: bool = True, seed: int = 0,
                   out: Path | None = None, compile: bool = False, attn: str = "sdpa", soft: bool = False,
                   level: list[float] = [0.0, 0.25, 0.4, 0.5], evidence_dir: Path | None = None) -> None:  # noqa: B006
    """Decode-step speed of a model shape: baseline vs sedac at controlled skip fractions (GPU, CUDA graphs)."""
    cfg = DecodeBenchConfig(shape=shape, backend=backend, batches=list(batch), kv_len=kv_len, bands=list(band),
                            fractions=list(fraction), repeats=repeats, cycles=cycles, device=device,
                            graphs=graphs, seed=seed, compile=compile, attn=attn, soft=soft, levels=list(level))
    if soft:
        result = run_soft_bench(cfg)
        print(format_soft_table(result))
        if evidence_dir is not None and result["card"] != "cpu":
            from sedac.bench.decode_soft import card_slug, evidence

            path = Path(evidence_dir) / f"decode-soft-{card_slug(result['card'])}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evidence(result), indent=1))
            print(f"wrote {path}")
    else:
        result = run_decode_bench(cfg)
        print(format_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


def add_decode_command(bench_app) -> None:
    """Register ``decode`` on a typer app (``sedac bench decode``)."""
    import typer

    def decode(shape: str = typer.Option("qwen2.5-7b", help="shape recipe name (recipes/shapes) or path"),
               backend: str = typer.Option("torch", help="only 'torch': PyTorch modules + CUDA graphs + Triton"),
               batch: list[int] = typer.Option([1, 32], help="batch sizes (repeatable)"),
               kv_len: int = typer.Option(2048, help="KV-cache length attended per step"),
               band: list[int] = typer.Option([8, 14], help="band sizes: last K layers (repeatable)"),
               fraction: list[float] = typer.Option([0.0, 0.25, 0.5, 1.0], help="skipped-step fractions (quarters)"),
               repeats: int = typer.Option(15, help="timed repeats (median reported)"),
               cycles: int = typer.Option(8, help="4-step cycles per repeat"),
               device: str = typer.Option("cuda", help="cuda, or cpu for a smoke run"),
               graphs: bool = typer.Option(True, help="capture each step in one CUDA graph"),
               seed: int = typer.Option(0, help="RNG seed"),
               out: Path = typer.Option(None, help="write the JSON result here"),
               compile: bool = typer.Option(False, help="torch.compile norms/projections/baseline MLP (all variants)"),
               attn: str = typer.Option("sdpa", help="decode attention: sdpa (enable_gqa) or bmm (grouped matmuls)"),
               soft: bool = typer.Option(False, help="soft-skip variants: every MLP sparse at each --level, "
                                         "MLP microbenchmarks, eager and compiled (try --batch 1 4 8 32)"),
               level: list[float] = typer.Option([0.0, 0.25, 0.4, 0.5], help="--soft: sparsity of x and h (repeatable)"),
               evidence_dir: Path = typer.Option(None, help="--soft: write decode-soft-<card>.json here"),
               ) -> None:
        decode_command(shape, backend, batch, kv_len, band, fraction, repeats, cycles, device, graphs, seed, out,
                       compile, attn, soft, level, evidence_dir)

    decode.__doc__ = decode_command.__doc__
    bench_app.command("decode")(decode)


if __name__ == "__main__":
    import sys

    import typer

    from sedac.errors import SedacError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    add_decode_command(app)

    @app.callback()
    def _root() -> None:
        """sedac decode benchmark (python -m sedac.bench.decode decode ...)."""

    try:
        app()
    except SedacError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
