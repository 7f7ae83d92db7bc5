#!/usr/bin/env bash
# The accelerator check, one command: on a machine with one NVIDIA GPU and jax with CUDA, within 8 minutes,
#   1. the suite's device-relevant tests (training, models, pruning, convolutions, barriers, seeds at once),
#   2. `bench --only=step` for resnet20, vgg16 and resnet50 (PyTorch CUDA beside it where torch has CUDA),
#   3. the seeds-at-once benchmark (vmapped vs sequential),
#   4. the Fashion-MNIST study (`configs/fashion_mnist.py:paper` where that preset exists, else the default;
#      the whole preset, time-boxed and resumable: rerun the same command to go on),
# each part time-boxed, a failed part not stopping the next, everything written under one folder:
#   environment.json, nvidia-smi.txt, tests.xml + tests.log, step_<model>.json, seeds.json,
#   study/ (study.md, study.csv, *.png, the runs), and summary.json (each part's exit status and seconds).
#
# Usage: benchmarks/device_check.sh [--smoke] [OUT]        (OUT default: runs/device_check)
#   --smoke: on CPU, tiny sizes, one quick test, the study on digits (no download): checks that the script
#   itself works (tests/test_device_check.py).
#
# What has to travel with the working tree (the device tool copies tracked and untracked, non-ignored files):
#   - aws_jax's own dependencies that the GPU machine lacks, as wheels for its Python in device_wheels/: with that
#     Python here, `python3.12 -m pip wheel -w all tensorflow-datasets grain ml-collections tensorboardX
#     importlib_resources`, then copy into device_wheels/ the ones the machine does not have (on the lent H200
#     image: array_record dm_tree docstring_parser googleapis_common_protos grain immutabledict importlib_resources
#     ml_collections portpicker promise simple_parsing tensorboardx tensorflow_datasets tensorflow_metadata
#     termcolor toml; 11 MB; jax with CUDA, flax, optax, orbax, chex are its own). When aws_jax does not import,
#     this script installs them into OUT/site (`pip install --no-index --no-deps --target`), first on PYTHONPATH.
#   - Fashion-MNIST for the study, where the GPU machine has no /usr/share/datasets/fashion-mnist:
#     `cp -r /usr/share/datasets/fashion-mnist device_data/` here (30 MB); this script copies it into place.
#   Neither folder is committed (.gitignore): the device tool must carry them (`carry: ["device_wheels",
#   "device_data"]`). Without them, the parts that need them fail and say so in summary.json.
set -uo pipefail

SMOKE=0
if [[ "${1:-}" == --smoke ]]; then SMOKE=1; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$REPO/runs/device_check}" && cd "${1:-$REPO/runs/device_check}" && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the tests' processes and PyTorch share the GPU
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
STATUS=()

# part NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output to OUT/NAME.log; records status, time.
part() {
  local name="$1" limit="$2" start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  STATUS+=("\"$name\": {\"exit\": $rc, \"seconds\": $((SECONDS - start))}")
  echo "   exit $rc after $((SECONDS - start)) s"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
}

# bench PART ARGS...: one `python -m aws_jax.bench` whose JSON line becomes OUT/PART.json.
bench() {
  local name="$1" limit="$2"
  shift 2
  part "$name" "$limit" "$PYTHON" -m aws_jax.bench "$@"
  tail -n 1 "$OUT/$name.log" | "$PYTHON" -c 'import json, sys; json.dump(json.loads(sys.stdin.read()), sys.stdout)' \
    > "$OUT/$name.json" 2>/dev/null || rm -f "$OUT/$name.json"
}

if ! "$PYTHON" -c 'import aws_jax.data, aws_jax.study, aws_jax.bench' 2>/dev/null && [[ -d device_wheels ]]; then
  # beside the machine's own packages, not over them: a folder of its own, first on the path
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$OUT/site" device_wheels/*.whl \
    > "$OUT/wheels.log" 2>&1
  export PYTHONPATH="$OUT/site:$PYTHONPATH"
fi
if [[ ! -d /usr/share/datasets/fashion-mnist && -d device_data/fashion-mnist ]]; then
  mkdir -p /usr/share/datasets && cp -r device_data/fashion-mnist /usr/share/datasets/
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo 'no nvidia-smi' > "$OUT/nvidia-smi.txt"
"$PYTHON" - > "$OUT/environment.json" <<'EOF'
import json, os, platform
import jax
print(json.dumps({'jax': jax.__version__, 'backend': jax.default_backend(),
                  'devices': [str(d) for d in jax.devices()], 'machine': platform.machine(),
                  'cpu_count': os.cpu_count()}))
EOF

TORCH=()
if [[ $SMOKE == 1 ]]; then
  part tests 60 "$PYTHON" -m pytest -q -n 0 -p no:cacheprovider --junitxml="$OUT/tests.xml" \
    tests/test_conv.py -k 'compiler_options_compile'
  bench step_small_cnn 90 --only=step --smoke --model=small_cnn --batch=8 --steps=2 --repeats=1 --profile
  bench seeds 90 --only=seeds --smoke
  STUDY=(--config.train_examples=256 --config.prune.warmup_epochs=1 --config.prune.rounds=1
         --config.prune.round_epochs=1 --config.final.epochs=1 "--config.study.methods=('aws',)"
         "--config.study.starts=('signed',)" "--config.study.seeds=(2,)" --config.barrier.points=2
         --config.barrier.bn_batches=1 --config.progress=False)
  STUDY_LIMIT=120
else
  if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then TORCH=(--torch); fi
  # one worker per 2 cores: compilation, not the GPU, bounds these tests (8 workers on an H200's 16 cores: 178 s)
  part tests 170 "$PYTHON" -m pytest -q -n "$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 ))" -rf --tb=line \
    -p no:cacheprovider --junitxml="$OUT/tests.xml" tests/test_train.py tests/test_models.py tests/test_pruning.py \
    tests/test_conv.py tests/test_barrier.py tests/test_methods.py -k 'not fault'
  bench step_resnet20 40 --only=step --model=resnet20 --steps=20 --repeats=1 --profile "${TORCH[@]}"
  bench step_vgg16 40 --only=step --model=vgg16 --steps=20 --repeats=1 --profile "${TORCH[@]}"
  bench step_resnet50 70 --only=step --model=resnet50 --batch=64 --classes=100 --steps=20 --repeats=1 --profile "${TORCH[@]}"
  bench seeds 50 --only=seeds
  STUDY=(--config.progress=False)  # the whole preset: rerun to go on where the time box stopped it
  STUDY_LIMIT=110
fi
if [[ $SMOKE == 1 ]]; then
  STUDY_CONFIG=configs/digits.py  # no download, seconds: the smoke run checks this script, not the study
else
  STUDY_CONFIG=configs/fashion_mnist.py$("$PYTHON" -c '
import importlib.util
spec = importlib.util.spec_from_file_location("fashion_mnist", "configs/fashion_mnist.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
try:
  module.get_config("paper")
  print(":paper")
except Exception:  # no such preset (yet): get_config takes none, or refuses this one
  pass')
fi
part study "$STUDY_LIMIT" "$PYTHON" -m aws_jax.study --config="$STUDY_CONFIG" --workdir="$OUT/study" "${STUDY[@]}"

(IFS=,; echo "{\"smoke\": $SMOKE, \"study_config\": \"$STUDY_CONFIG\", ${STATUS[*]}}") \
  > "$OUT/summary.json"
echo "written under $OUT"
