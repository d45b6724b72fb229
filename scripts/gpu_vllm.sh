#!/usr/bin/env bash
# Real CUDA vLLM (0.26, the shared carry ../shared/tools/vllm-gpu) with the sedac plugin, in ONE device call:
#   (c) decode throughput, Qwen2.5-7B shape, random weights: plain vLLM vs sedac never / band 8 and 14 always,
#       batch 1 and 32, compiled with CUDA graphs (scripts/vllm_throughput.py) - first, alone on the GPU;
#   (a) the vLLM plugin tests on CUDA (tests/runtime/test_vllm_plugin.py: eager + compiled with CUDA graphs,
#       static + dynamic (+ its refusal under CUDA graphs), prefix caching on, speculative ngram), in 4 parallel
#       pytest groups, with (b) `sedac serve` compiled with CUDA graphs answering the OpenAI client, /metrics
#       (scripts/gpu_vllm_serve.py) beside them;
#   then writes $OUT/gpu-vllm-<card>.json (copy it to docs/evidence/) and $OUT/perf_table.md.
# Here (from the worktree root): bash scripts/gpu_vllm_prepare.sh   (builds .gpu-carry: vLLM + this project's wheel)
# Device: cd <copy of this worktree> && GPU_CARRY=<path of .gpu-carry> bash scripts/gpu_vllm.sh
# Output ($OUT): gpu-vllm-<card>.json, perf_table.md, logs.tar.gz (every log, junit xml and raw JSON).
# Time: install + import 15 s; tests + serve in parallel 330-380 s (2 x H200, TEST_TIMEOUT=400); throughput
# (interleaved: the 3 engines start one after another in one process, ~115 s each, then 15 rounds) ~500 s on one
# H200 (run 5). So run it as two calls (the 10-minute limit):
#   SKIP_BENCH=1 TEST_TIMEOUT=400 bash scripts/gpu_vllm.sh      # tests + serve (kind nvidia-h200-x2: TP = 2 too)
#   SKIP_TESTS=1 BENCH_TIMEOUT=570 bash scripts/gpu_vllm.sh     # throughput only (one GPU; CUDA_VISIBLE_DEVICES=0 on x2)
# A stage that did not run keeps the committed figures of docs/evidence/gpu-vllm-<card>.json: copy the first call's
# JSON there before the second call and the second call's JSON holds both.
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-/tmp/sedac_gpu_vllm}; O=$FINAL/work; mkdir -p "$O"  # logs; FINAL gets the evidence + logs.tar.gz
CARRY=${GPU_CARRY:-.gpu-carry}
T0=$(date +%s)
stamp() { echo "[gpu_vllm $(( $(date +%s) - T0 ))s] $*"; }
# run.sh installs vLLM + the wheels into /tmp/site (once here: parallel installs would race), then R runs with them
bash "$CARRY/run.sh" -- python3 -c "import vllm, torch; print('ENV vllm', vllm.__version__, 'torch', torch.__version__, \
  torch.cuda.get_device_name(0)); print('GPUS', torch.cuda.device_count())" > "$O/env.txt" 2>&1
grep "^ENV" "$O/env.txt" || { tail -20 "$O/env.txt"; exit 3; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 \
       TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=/tmp/site
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  stamp "throughput"
  timeout "${BENCH_TIMEOUT:-570}" python3 scripts/vllm_throughput.py --out "$O/throughput.json" \
    --repeats "${REPEATS:-15}" --work "$O/throughput" > "$O/throughput.log" 2>&1
  echo "throughput rc=$?" >> "$O/env.txt"; tail -12 "$O/throughput.log"
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
stamp "plugin tests + serve (parallel)"
PT="python3 -m pytest -q -p no:cacheprovider tests/runtime/test_vllm_plugin.py -k"
groups=("plugin_loaded or unconfigured or forced_skip or token_policy or batch_policy or same_decisions_as_hf"
        "compiled_op or compiled_static" "dynamic" "speculative")
# tensor parallelism (TP = 2) where the machine has 2 GPUs (kind nvidia-h200-x2); skipped (and counted so) elsewhere
groups+=("tensor_parallel")
# soft skip (tests/runtime/test_vllm_soft.py: never-firing = plain, HF-equal levels, counters, compiled = eager)
SOFT="python3 -m pytest -q -p no:cacheprovider tests/runtime/test_vllm_soft.py"
# two GPUs: the groups alternate between them (less contention; the TP group uses both)
NG=$(sed -n 's/^GPUS //p' "$O/env.txt"); NG=${NG:-1}
gpu() { if [ "$NG" -ge 2 ]; then echo "CUDA_VISIBLE_DEVICES=$1"; else echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}"; fi; }
pids=()
for i in "${!groups[@]}"; do
  dev=$(gpu $((i % 2))); [ "${groups[$i]}" = tensor_parallel ] && dev="CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1}"
  env "$dev" timeout "${TEST_TIMEOUT:-240}" $PT "${groups[$i]}" --junitxml="$O/tests_g$i.xml" > "$O/tests_g$i.log" 2>&1 &
  pids+=($!)
done
env "$(gpu 1)" timeout "${TEST_TIMEOUT:-240}" $SOFT --junitxml="$O/tests_g9.xml" > "$O/tests_g9.log" 2>&1 &
pids+=($!)
# the MLP kernels' own GPU tests (bf16 vs fp64, float32 at full precision, CUDA graphs; not the timing test,
# which other engines on the GPU would disturb: scripts/gpu_bench.sh runs it alone)
env "$(gpu 1)" timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu -k "not cheap" \
  tests/runtime/test_kernels.py tests/runtime/test_sparse_ops.py tests/runtime/test_decide_ops.py \
  --junitxml="$O/kernels.xml" > "$O/kernels.log" 2>&1 &
pids+=($!)
env "$(gpu 0)" timeout "${TEST_TIMEOUT:-240}" python3 scripts/gpu_vllm_serve.py "$O/serve.json" > "$O/serve_run.log" 2>&1 &
spid=$!
for p in "${pids[@]}"; do wait "$p"; done; wait "$spid"
for i in "${!groups[@]}" 9; do tail -3 "$O/tests_g$i.log"; done; tail -3 "$O/kernels.log"; grep -h SERVE "$O/serve_run.log" | cut -c1-600
fi
stamp "evidence"
python3 - "$O" <<'PY'
import glob, json, re, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
o = Path(sys.argv[1])
env = (o / "env.txt").read_text()
m = re.search(r"ENV vllm (\S+) torch (\S+) (.+)", env)
vllm_v, torch_v, card_name = (m.group(1), m.group(2), m.group(3).strip()) if m else ("?", "?", "?")
card = "h200" if "H200" in card_name else "h100" if "H100" in card_name else re.sub(r"\W+", "-", card_name.lower())
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
prev = Path(f"docs/evidence/gpu-vllm-{card}.json")  # a stage that did not run keeps the committed figures
ev = json.loads(prev.read_text()) if prev.exists() else {}
g = re.search(r"GPUS (\d+)", env)
ev.update({"card": card, "card_name": card_name, "vllm": vllm_v, "torch": torch_v, "gpus": int(g.group(1)) if g else None,
           "command": "bash scripts/gpu_vllm.sh (device call; see docs/perf.md)"})
xmls = sorted(glob.glob(str(o / "tests_g*.xml")))
if xmls:
    names = {}
    for f in xmls:
        for tc in ET.parse(f).getroot().iter("testcase"):
            names[tc.get("name")] = ("failed" if tc.find("failure") is not None or tc.find("error") is not None
                                     else "skipped" if tc.find("skipped") is not None else "passed")
    for lg in sorted(glob.glob(str(o / "tests_g*.log"))):  # a group killed by its timeout wrote no junit xml
        if not Path(lg[:-4] + ".xml").exists():
            names[f"{Path(lg).stem}: no result (timed out?)"] = "failed"
    ev.update({"tests_run_utc": now, "plugin_tests": names,
               "plugin_tests_passed": sum(v == "passed" for v in names.values()),
               "plugin_tests_failed": sum(v == "failed" for v in names.values()),
               "plugin_tests_skipped": sum(v == "skipped" for v in names.values())})
kx = o / "kernels.xml"
if kx.exists():
    r = ET.parse(kx).getroot()
    r = r if r.tag == "testsuite" else r.find("testsuite")
    ev["kernel_tests"] = {k: int(r.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
sv = o / "serve.json"
if sv.exists():
    ev["serve"] = dict(json.loads(sv.read_text()), run_utc=now)
tp = o / "throughput.json"
if tp.exists():
    r = json.loads(tp.read_text())
    ev["throughput_run_utc"] = now
    for b in r["batches"]:
        ev[f"never_over_plain_b{b}"] = r.get(f"band8_never_over_plain_b{b}")  # band 8 (the speed bar's band); band 14: own key
        ev[f"never_pooled_paired_over_plain_b{b}"] = r.get(f"never_pooled_paired_over_plain_b{b}")  # interleaved only
        for k in (8, 14):
            ev[f"band{k}_always_over_plain_b{b}"] = r.get(f"band{k}_always_over_plain_b{b}")
            ev[f"band{k}_never_over_plain_b{b}"] = r.get(f"band{k}_never_over_plain_b{b}")
    ev["throughput"] = r
    sys.path.insert(0, "scripts")
    from vllm_throughput import format_table
    (o / "perf_table.md").write_text(format_table(r) + "\n")
(o / f"gpu-vllm-{card}.json").write_text(json.dumps(ev, indent=1))
print(json.dumps({k: v for k, v in ev.items() if k not in ("throughput", "plugin_tests", "serve")}, indent=1))
print("serve ok:", ev.get("serve", {}).get("ok"), ev.get("serve", {}).get("error", ""))
PY
cp "$O"/gpu-vllm-*.json "$O"/perf_table.md "$FINAL"/ 2>/dev/null
tar -czf "$FINAL/logs.tar.gz" -C "$O" . && rm -rf "$O"
stamp "done"
