"""Summarise collected shards: how often skipping a band keeps top-1, and the perplexity cost.

    python scripts/shard_stats.py SHARD_DIR [SHARD_DIR ...] --band 20-27
Prints, per directory: tokens, top-1 kept under the skip, kept among the 10 % lowest-entropy tokens,
and teacher-forced perplexity with the full model and with the band skipped for every token.
"""

import argparse

import torch

from sedac.collect.shards import load_shard, open_shards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--band", default="20-27")
    args = ap.parse_args()
    for d in args.dirs:
        _, paths = open_shards(d)
        keys = ["entropy", f"keep_top1.{args.band}", "nll", f"dnll.{args.band}"]
        parts = [load_shard(p, keys=keys) for p in paths]
        ent, keep, nll, dnll = (torch.cat([x[k] for x in parts]) for k in keys)
        keep = keep.float()
        ok = ~nll.isnan()
        low = ent <= ent.quantile(0.1)
        print(f"{d}: tokens {ent.numel()}, top-1 kept {keep.mean():.3f}, kept among lowest-entropy decile "
              f"{keep[low].mean():.3f}, PPL full {nll[ok].mean().exp():.2f} -> skipped "
              f"{(nll[ok] + dnll[ok]).mean().exp():.2f}")


if __name__ == "__main__":
    main()
