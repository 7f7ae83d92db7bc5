"""The benchmark command must not rot: its smoke run prints every figure (timings are not asserted)."""
import json
import subprocess
import sys

from conftest import REPO


def test_bench_smoke_prints_every_figure():
  result = subprocess.run([sys.executable, '-m', 'aws_jax.bench', '--smoke'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  step = figures['steps'][0]
  for key in ('compile_s', 'ms_per_step_median', 'gflops_achieved', 'masking_share', 'share_of_matmul_peak'):
    assert step[key] > 0, key
  assert figures['matmul_peak']['gflops'] > 0
  assert figures['aws_overhead']['ms_lrr'] > 0
  assert figures['stage']['train_step_compilations'] == 1
  assert figures['barrier']['points'] == 3 and figures['barrier']['wall_s'] > 0
