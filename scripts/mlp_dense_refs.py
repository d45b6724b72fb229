"""Keep-all Triton MLP vs the dense references, one MLP, Qwen2.5-7B shape, bf16, GPU (perf.md, issue 13/12).

    python scripts/mlp_dense_refs.py [--rows 32 1] [--out DIR]

Runs :func:`sedac.bench.decode_model.mlp_microbench` (CUDA graph of 21 calls over 3 random weight sets, median
of 11) per row count and prints each reference's time: ``torch_hf`` / ``torch_fused`` (activation as
``F.silu(g) * u``) and ``torch_fused_act`` (cuBLAS GEMMs around one fused ``silu_and_mul``, the MLP vLLM runs).
Writes ``DIR/mlp_dense_refs.json`` after every row count.
"""

import argparse
import json
import os
from pathlib import Path

import torch

from sedac.bench.decode import load_shape
from sedac.bench.decode_model import mlp_microbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--shape", default="qwen2.5-7b")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    shape, out = load_shape(a.shape), []
    for rows in a.rows:
        r = mlp_microbench(shape, rows, torch.device("cuda"), torch.bfloat16, 0)
        r["card"] = torch.cuda.get_device_name(0)
        out.append(r)
        us = {k: round(v * 1000, 1) for k, v in r["ms"].items()}
        print(json.dumps({"rows": rows, "card": r["card"], "us": us, "keep_all_vs_best": round(r["speed_vs_best_torch"], 4),
                          "configs": r["configs"]}), flush=True)
        Path(a.out, "mlp_dense_refs.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
