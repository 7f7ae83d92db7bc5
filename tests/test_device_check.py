"""benchmarks/device_check.sh, the accelerator check, must not rot before a GPU is lent: its --smoke mode runs here."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from aws_jax.rundir import StudyDir
from conftest import REPO


@pytest.mark.long
def test_device_check_smoke_writes_every_part(tmp_path):
  # The interpreter running the suite, whatever `python` is first on PATH (a venv that is not activated).
  result = subprocess.run(['bash', 'benchmarks/device_check.sh', '--smoke', str(tmp_path)], cwd=REPO,
                          env={**os.environ, 'PYTHON': sys.executable}, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  parts = {name: part for name, part in summary.items() if isinstance(part, dict)}
  assert set(parts) == {'tests', 'step_small_cnn', 'seeds', 'study'}
  assert all(part['exit'] == 0 for part in parts.values()), parts
  assert json.loads((tmp_path / 'environment.json').read_text())['backend'] == 'cpu'
  step = json.loads((tmp_path / 'step_small_cnn.json').read_text())['steps'][0]
  assert step['model'] == 'small_cnn' and 'masking_ms' in step and step['share_of_matmul_peak'] > 0
  assert step['ms_by_operation_kind'] and all(ms > 0 for ms in step['ms_by_operation_kind'].values())
  assert json.loads((tmp_path / 'seeds.json').read_text())['seeds'][0]['sequential_images_per_s'] > 0
  assert (tmp_path / 'tests.xml').exists() and (tmp_path / 'study' / 'study.md').exists()
  assert list((tmp_path / 'study').glob('*.png'))


@pytest.mark.long
def test_psi_ablation_smoke_runs_both_variants_with_pruning_seeds_at_once(tmp_path):
  result = subprocess.run(['bash', 'benchmarks/psi_ablation.sh', '--smoke', str(tmp_path)], cwd=REPO,
                          env={**os.environ, 'PYTHON': sys.executable}, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + (tmp_path / 'study.log').read_text()[-3000:]
  assert json.loads((tmp_path / 'summary.json').read_text())['exit'] == 0
  study = StudyDir(tmp_path / 'study')
  with open(study.csv, newline='') as f:
    rows = list(csv.DictReader(f))
  assert {(r['variant'], r['pruning_seed']) for r in rows} == {
      (v, p) for v in ('psi_decayed', 'psi_not_decayed') for p in ('1', '2')}
  assert '## Differences between variants' in pathlib.Path(study.markdown).read_text()
  assert os.path.exists(study.figure('psi.png'))
