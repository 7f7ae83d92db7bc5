"""The benchmark command must not rot: its smoke run prints every figure (timings are not asserted)."""
import json
import os
import subprocess
import sys
import types

import pytest

from conftest import REPO

# The one JSON line of benchmarks/torch_baseline.py, key for key as the authors'-way reference script prints it.
TORCH_KEYS = {'framework', 'version', 'model', 'batch', 'image', 'classes', 'aws', 'threads', 'params',
              'ms_per_step_median', 'ms_per_step_min', 'ms_per_step_max', 'steps', 'machine'}


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
  assert [(s['model'], s['seeds']) for s in figures['seeds']] == [('small_cnn', 2)]  # ResNet-20 too at full size
  assert all(s['vmapped_images_per_s'] > 0 and s['sequential_images_per_s'] > 0 for s in figures['seeds'])


def test_torch_baseline_prints_what_bench_reads(monkeypatch):
  """bench.torch_figures runs the in-repo PyTorch baseline (its default --torch_script) and reads its JSON line."""
  pytest.importorskip('torch')
  from aws_jax import bench  # pylint: disable=import-outside-toplevel
  script = bench._TORCH_SCRIPT.default  # pylint: disable=protected-access
  assert os.path.samefile(script, os.path.join(REPO, 'benchmarks', 'torch_baseline.py'))
  monkeypatch.setattr(bench, '_TORCH_SCRIPT', types.SimpleNamespace(value=script))  # no absl flag parsing here
  figures = bench.torch_figures('resnet20', batch=2, image=8, classes=10, steps=1, sparsity=0.5, aws=True)
  assert set(figures) == TORCH_KEYS
  assert figures['framework'] == 'torch' and figures['version']  # compared() reads the version ...
  assert figures['ms_per_step_median'] > 0                        # ... and the median
  assert (figures['model'], figures['batch'], figures['image'], figures['steps']) == ('resnet20', 2, 8, 1)
  assert figures['params'] == 272_474  # ResNet-20, 10 classes: the same count as aws_jax's model
