#!/usr/bin/env python
"""Long fuzz run of the probe loader (sedac.probes.load_probe).

Contract checked: every input either loads as a valid probe or raises ProbeError; any other
exception, a hang (> --timeout s) or a call into pickle/torch.load/numpy.load is a failure
(exit code 1, the offending input saved under --crash-dir).

Engines:
  random   seeded mutators from sedac.testing.fuzz (structure-aware; always available)
  atheris  coverage-guided libFuzzer over sedac.probes.format; each input's first byte picks
           "raw bytes as the file" or "a seeded structure-aware mutator" (pip install atheris)

    python scripts/fuzz_probe.py --iterations 200000              # random engine
    python scripts/fuzz_probe.py --engine atheris --iterations 100000
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=10_000, help="number of inputs to try (> 0)")
    ap.add_argument("--engine", choices=["random", "atheris"], default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per input")
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    args = ap.parse_args()
    if args.iterations <= 0:
        ap.error("--iterations must be > 0")
    return args


def run_random(args, load, ProbeError, fuzz) -> int:
    rng = random.Random(args.seed)
    stats: collections.Counter = collections.Counter()
    failures = 0
    work = Path(tempfile.mkdtemp(prefix="sedac-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    path = work / "p.safetensors"
    t0 = time.perf_counter()
    with fuzz.forbid_unpickling() as calls:
        for i in range(args.iterations):
            name, data = fuzz.malformed_probe(rng)
            path.write_bytes(data)
            try:
                with fuzz.time_limit(args.timeout):
                    load(path, model_fingerprint=dict(fuzz.FP) if rng.random() < 0.5 else None)
                stats[name, "loaded"] += 1
            except ProbeError:
                stats[name, "ProbeError"] += 1
            except BaseException as exc:  # noqa: BLE001 - that is the point: report anything else
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures += 1
                _save_crash(args.crash_dir, data, f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            if (i + 1) % 10_000 == 0:
                print(f"  {i + 1:>8} inputs  {time.perf_counter() - t0:7.1f} s  failures {failures}", flush=True)
    dt = time.perf_counter() - t0
    print(f"engine=random iterations={args.iterations} seed={args.seed} time={dt:.1f}s "
          f"({args.iterations / dt:.0f}/s) failures={failures} unpickle_calls={len(calls)}")
    for (name, outcome), n in sorted(stats.items()):
        print(f"  {name:<24} {outcome:<10} {n}")
    return 1 if failures or calls else 0


def run_atheris(args, load, ProbeError, fuzz) -> int:
    import atheris

    work = Path(tempfile.mkdtemp(prefix="sedac-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    path = work / "p.safetensors"
    guard = fuzz.forbid_unpickling()
    calls = guard.__enter__()

    def one_input(buf: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(buf)
        if fdp.ConsumeBool():
            data = fdp.ConsumeBytes(fdp.remaining_bytes())
        else:
            rng = random.Random(fdp.ConsumeInt(8))
            data = fuzz.MUTATORS[sorted(fuzz.MUTATORS)[fdp.ConsumeIntInRange(0, len(fuzz.MUTATORS) - 1)]](rng)
        path.write_bytes(data)
        try:
            load(path)
        except ProbeError:
            pass
        if calls:
            raise AssertionError(f"loader called {calls}")

    try:
        atheris.Setup([sys.argv[0], f"-runs={args.iterations}", f"-timeout={int(args.timeout)}",
                       f"-seed={args.seed + 1}", f"-artifact_prefix={args.crash_dir}/", "-max_len=4096"],
                      one_input)
        args.crash_dir.mkdir(parents=True, exist_ok=True)
        atheris.Fuzz()  # libFuzzer exits the process: 0 after -runs inputs ("Done N runs"), non-zero on a crash
    finally:
        guard.__exit__(None, None, None)
    return 0


def _save_crash(crash_dir: Path, data: bytes, report: str) -> None:
    crash_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(data).hexdigest()[:16]
    (crash_dir / f"crash-{h}.safetensors").write_bytes(data)
    (crash_dir / f"crash-{h}.txt").write_text(report)
    print(f"FAILURE saved as {crash_dir}/crash-{h}.*: {report.splitlines()[0]}", flush=True)


def main() -> int:
    args = parse_args()
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["sedac"]):  # coverage feedback for the parser
            import sedac.probes.format  # noqa: F401
            import sedac.probes.probe  # noqa: F401
    from sedac.errors import ProbeError
    from sedac.probes import load_probe
    from sedac.testing import fuzz

    if args.engine == "atheris":
        return run_atheris(args, load_probe, ProbeError, fuzz)
    return run_random(args, load_probe, ProbeError, fuzz)


if __name__ == "__main__":
    sys.exit(main())
