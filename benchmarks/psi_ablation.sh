#!/usr/bin/env bash
# What ψ does under AWS, on one GPU in one command: the `:paper` preset (configs/fashion_mnist.py) as a study with two
# variants, ψ decayed as in the authors' code (`psi_decayed`) and ψ left out of weight decay (`psi_not_decayed`,
# optimizer.norm_weight_decay=False); AWS and LRR; starts signed, signed_keep_norm, mask and dense (+ retrain, the
# LMC reference); seeds 2, 3, 4; pruning seeds 1, 2, 3, each pruning seed's part in a process of its own
# (`study --parallel`). Estimate: 6–7 minutes on one H100 or H200 (the preset's three pruning runs at once took
# 195 s on an H200; two variants). Time-boxed at 8 minutes and resumable: rerun the same command to go on.
# It writes OUT/study (study.md with each variant's tables and the differences between them, study.csv, psi.png,
# psi_reset_barrier.png, ...), OUT/study.log and OUT/summary.json (exit status and seconds).
#
# Usage: benchmarks/psi_ablation.sh [--smoke] [OUT]        (OUT default: runs/psi_ablation)
#   --smoke: on CPU, digits, AWS alone, one round, one seed, two pruning seeds: checks the script itself
#   (tests/test_device_check.py).
# On a lent GPU machine the same wheels and data as benchmarks/device_check.sh must travel (see its header).
set -uo pipefail

SMOKE=0
if [[ "${1:-}" == --smoke ]]; then SMOKE=1; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$REPO/runs/psi_ablation}" && cd "${1:-$REPO/runs/psi_ablation}" && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the pruning seeds' processes share the GPU
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
if ! "$PYTHON" -c 'import aws_jax.study' 2>/dev/null && [[ -d device_wheels ]]; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$OUT/site" device_wheels/*.whl \
    > "$OUT/wheels.log" 2>&1
  export PYTHONPATH="$OUT/site:$PYTHONPATH"
fi
if [[ ! -d /usr/share/datasets/fashion-mnist && -d device_data/fashion-mnist ]]; then
  mkdir -p /usr/share/datasets && cp -r device_data/fashion-mnist /usr/share/datasets/
fi

VARIANTS="(('psi_decayed', {}), ('psi_not_decayed', {'optimizer.norm_weight_decay': False}))"
if [[ $SMOKE == 1 ]]; then
  CONFIG=configs/digits.py:study
  GRID=(--config.prune.warmup_epochs=1 --config.prune.rounds=1 --config.prune.round_epochs=1 --config.final.epochs=1
        --config.train_examples=256 "--config.study.methods=('aws',)"
        "--config.study.starts=('signed', 'signed_keep_norm')" "--config.study.seeds=(2,)"
        "--config.study.pruning_seeds=(1, 2)" --config.barrier.points=2 --config.barrier.bn_batches=1)
  LIMIT=600
else
  CONFIG=configs/fashion_mnist.py:paper
  GRID=("--config.study.starts=('signed', 'signed_keep_norm', 'mask', 'dense')" "--config.study.seeds=(2, 3, 4)"
        "--config.study.pruning_seeds=(1, 2, 3)")
  LIMIT=480
fi
START=$SECONDS
timeout --kill-after=10 --signal=TERM "$LIMIT" "$PYTHON" -m aws_jax.study --config="$CONFIG" --workdir="$OUT/study" \
  "${GRID[@]}" "--config.study.variants=$VARIANTS" --parallel > "$OUT/study.log" 2>&1
STATUS=$?
echo "{\"smoke\": $SMOKE, \"config\": \"$CONFIG\", \"exit\": $STATUS, \"seconds\": $((SECONDS - START))}" \
  > "$OUT/summary.json"
tail -n 5 "$OUT/study.log"
echo "written under $OUT (exit $STATUS; 124: the time box ended it, rerun to go on)"
exit $STATUS
