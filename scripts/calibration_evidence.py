"""Evidence driver: measure each policy's risk matrix ONCE on SmolLM2, certify at eps 0.01/0.05/0.10.

    python scripts/calibration_evidence.py PROBE OUT_JSON N_SEQ SEQ_LEN GRID_SIZE [THREADS]
Data: ../shared/data/wikitext-2/test.txt (corpus mode). Used for the issue-5 evidence table.
"""
import json, sys, time
import numpy as np
import torch

from sedac.adapter import adapt
from sedac.calibration.config import CalibrateConfig
from sedac.calibration.data import load_cal_sequences
from sedac.calibration.policies import parse_policy
from sedac.calibration.risk import full_pass, n_scored_tokens
from sedac.calibration.run import certify_policy, measure_policy
from sedac.models.loading import load_hf
from sedac.probes import load_probe

probe_path, out_json = sys.argv[1], sys.argv[2]
n_seq, T, G = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
eps_list = [0.01, 0.05, 0.10]
t0 = time.time()
base = dict(probe=probe_path, data=str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/test.txt"), mode="corpus", max_length=T,
            n_sequences=n_seq, grid_sequences=8, grid_size=G, grid_min_skip=0.002, grid_max_skip=0.2,
            stop_factor=3.0, epsilon=max(eps_list), delta=0.05, test_fraction=0.25, resamples=100,
            policies=["static-token", "dynamic-token"], progress=False)
cfg = CalibrateConfig(**base)
probe = load_probe(probe_path)
model, tok = load_hf(None, "float32", "cpu")
parts = adapt(model)
seqs, fp = load_cal_sequences(cfg, model, tok)
gs, units = seqs[:8], seqs[8:]
fg = full_pass(model, parts, probe, gs, 8)
full = full_pass(model, parts, probe, units, 8)
pool = np.concatenate([f["raw"][: len(s.ids) - 1].reshape(-1).numpy() for f, s in zip(fg, gs)])
ref = float(pool.mean())
from sedac.calibration.policies import dynamic_effective
pool_dyn = np.concatenate([dynamic_effective(f["raw"].numpy(), ref, 1.0, 8.0)[: len(s.ids) - 1].reshape(-1) for f, s in zip(fg, gs)])
print(f"data+full pass {time.time()-t0:.0f}s, {len(units)} units", flush=True)
toks = np.array([n_scored_tokens([s]) for s in units])
rows, dump = [], {}
for name in base["policies"]:
    spec = parse_policy(name)
    t1 = time.time()
    m = measure_policy(cfg, spec, model, parts, probe, units, full, pool if spec.mode == 'static' else pool_dyn, ref)
    print(f"{name}: measured {int((~np.isnan(m['risk']).any(0)).sum())}/{len(m['grid'])} points in {time.time()-t1:.0f}s", flush=True)
    dump[name] = {"grid": m["grid"], "risk": m["risk"].tolist(), "skip": m["skip"].tolist()}
    for eps in eps_list:
        c = CalibrateConfig(**{**base, "epsilon": eps})
        r = certify_policy(c, spec, m, toks, fp, ref)["certificate"]
        rows.append(r)
        rs = r.get("resampling", {})
        print(f"  eps={eps:<5} certified={r['certified']!s:5} value={r['value']} skip_cal={r['skip_rate']:.4f} "
              f"risk_cal={r['empirical_risk']} ucb={r['upper_bound']} test_risk={r['test_risk']} "
              f"test_skip={r['test_skip_rate']} exceed={rs.get('exceed_fraction')} smallest_ucb={r['smallest_ucb']}", flush=True)
json.dump({"certificates": rows, "matrices": dump, "seconds": time.time() - t0, "probe": probe_path,
           "data_fingerprint": fp}, open(out_json, "w"), indent=1, default=float)
print(f"total {time.time()-t0:.0f}s")
