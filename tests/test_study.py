"""Tests for aws_jax.study: the statistics by hand, bad grids refused up front, the digits study end to end."""
import csv
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aws_jax import plots, study
from aws_jax.errors import UserError
from aws_jax.rundir import Lock, RunDir, StudyDir
from conftest import REPO, SUBPROCESS_TIMEOUT

# configs/digits.py:study shrunk to a couple of minutes: 256 training images, 2 rounds, 2-epoch final trainings, cheap
# ψ-reset barriers.
TINY_STUDY = {'train_examples': 256, 'prune.warmup_epochs': 2, 'prune.rounds': 2, 'prune.round_epochs': 1,
              'final.epochs': 2, 'checkpoint_every_epochs': 2, 'barrier.points': 3, 'barrier.bn_batches': 2,
              'progress': False, 'study.seeds': (2, 3)}
STARTS = ('signed', 'signed_keep_norm', 'mask', 'dense')
TRAINED = ('signed', 'signed_keep_norm', 'mask', 'retrain')  # retrain: the LMC barrier's reference


def study_config(**overrides):
  """configs/digits.py:study with TINY_STUDY and `overrides` (dotted keys) applied."""
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import digits  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = digits.get_config('study')
  for key, value in {**TINY_STUDY, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def flags_of(overrides: dict) -> list[str]:
  return [f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}' for k, v in overrides.items()]


def read_csv(path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def file_times(directory) -> dict:
  """{path: mtime in ns} of every file under `directory`."""
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


def without_wall(row: dict) -> dict:
  return {k: v for k, v in row.items() if k != 'wall_s'}


def test_t_interval_by_hand():
  # Differences 0.10, 0.05, 0.15: mean 0.10, sample std 0.05, t(0.975, 2 dof) = 4.302653 (tables).
  differences = list(study.paired_differences({(1, 2): 0.90, (1, 3): 0.85, (1, 4): 0.95},
                                              {(1, 2): 0.80, (1, 3): 0.80, (1, 4): 0.80, (1, 5): 0.70}).values())
  np.testing.assert_allclose(differences, [0.10, 0.05, 0.15])
  mean, half_width = study.t_interval(differences)
  np.testing.assert_allclose([mean, half_width], [0.10, 4.302653 * 0.05 / math.sqrt(3)], rtol=1e-6)
  # Two values 1 and 3: mean 2, std √2, standard error 1, t(0.975, 1 dof) = 12.706205.
  np.testing.assert_allclose(study.t_interval([1.0, 3.0]), [2.0, 12.706205], rtol=1e-6)
  np.testing.assert_allclose(study.t_interval([1.0, 3.0], confidence=0.9), [2.0, 6.313752], rtol=1e-6)
  mean, half_width = study.t_interval([0.7])
  assert mean == 0.7 and math.isnan(half_width)
  assert study.paired_differences({(1, 2): 1.0}, {(1, 3): 1.0}) == {}


def row(method, start, seed, accuracy, source_round=3, pruning_seed=1):
  dense = method == 'dense'
  return {'method': method, 'start': start, 'source_round': None if dense else source_round,
          'fraction_left': 1.0 if dense else 0.512, 'pruning_seed': pruning_seed, 'seed': seed,
          'test_accuracy': accuracy, 'test_loss': 0.1, 'train_accuracy': 1.0, 'epochs': 2, 'wall_s': 1.0}


def test_variants_pair_cell_by_cell_with_the_first_variant():
  """Between variants: each cell of a variant minus the same cell of the first one, by (pruning seed, seed)."""
  rows = [{**row('aws', 'signed', seed, accuracy), 'variant': 'a'} for seed, accuracy in ((2, 0.80), (3, 0.70))]
  rows += [{**row('aws', 'signed', seed, accuracy), 'variant': 'b'} for seed, accuracy in ((2, 0.90), (3, 0.75))]
  rows += [{**row('lrr', 'signed', 2, 0.5), 'variant': 'b'}]  # no partner in variant a
  rows += [{**row('dense', 'dense', 2, 0.95), 'variant': 'a'}, {**row('dense', 'dense', 2, 0.93), 'variant': 'b'}]
  found = {d['label']: d for d in study.variant_comparisons(rows, ['a', 'b'])}
  assert set(found) == {'AWS signed: b − a', 'dense: b − a'}
  np.testing.assert_allclose(found['AWS signed: b − a']['mean'], 0.075)  # (0.10 + 0.05) / 2
  np.testing.assert_allclose(found['AWS signed: b − a']['half_width'], 12.706205 * 0.025, rtol=1e-6)
  np.testing.assert_allclose(found['dense: b − a']['mean'], -0.02)
  summaries = study.group_summaries(rows)
  assert {(s['variant'], s['method']) for s in summaries} == {('a', 'aws'), ('b', 'aws'), ('b', 'lrr'), ('a', 'dense'),
                                                              ('b', 'dense')}
  within = study.comparisons(rows, ('aws', 'lrr'), variant='b')
  assert {d['label'] for d in within} == {'AWS signed − dense', 'AWS signed − LRR signed'}
  assert study.variant_comparisons(rows, ['a']) == []


def test_several_pruning_runs_are_the_units_of_intervals():
  """Two pruning runs (seeds 1 and 7) × two final seeds: each interval is over the runs' means; dense, trained
  with the first run only, pairs with every run by final seed."""
  rows = [row('aws', 'signed', 2, 0.90), row('aws', 'signed', 3, 0.80), row('aws', 'signed', 2, 0.70, pruning_seed=7),
          row('aws', 'signed', 3, 0.60, pruning_seed=7), row('lrr', 'signed', 2, 0.85), row('lrr', 'signed', 3, 0.75),
          row('lrr', 'signed', 2, 0.72, pruning_seed=7), row('lrr', 'signed', 3, 0.58, pruning_seed=7),
          row('dense', 'dense', 2, 0.95), row('dense', 'dense', 3, 0.85)]
  summaries = {(s['method'], s['start']): s for s in study.group_summaries(rows)}
  aws = summaries['aws', 'signed']
  assert (aws['n'], aws['runs']) == (4, 2)
  np.testing.assert_allclose([aws['mean'], aws['std']], [0.75, np.std([0.9, 0.8, 0.7, 0.6], ddof=1)])
  np.testing.assert_allclose(aws['half_width'], 12.706205 * 0.1, rtol=1e-6)  # run means 0.85, 0.65: std 0.1·√2
  np.testing.assert_allclose(summaries['dense', 'dense']['half_width'], 12.706205 * 0.05, rtol=1e-6)  # over seeds
  differences = {d['label']: d for d in study.comparisons(rows, ('aws', 'lrr'))}
  # AWS − LRR per run: (0.05, 0.05) → 0.05 and (−0.02, 0.02) → 0; over the 2 runs: 0.025 ± t · 0.025.
  versus_lrr = differences['AWS signed − LRR signed']
  assert versus_lrr['n'] == 2
  np.testing.assert_allclose([versus_lrr['mean'], versus_lrr['half_width']], [0.025, 12.706205 * 0.025], rtol=1e-6)
  # AWS − dense, dense paired by seed with both runs: run 1 −0.05, run 7 −0.25.
  versus_dense = differences['AWS signed − dense']
  assert versus_dense['n'] == 2
  np.testing.assert_allclose([versus_dense['mean'], versus_dense['half_width']], [-0.15, 12.706205 * 0.1], rtol=1e-6)
  table = study.markdown(list(summaries.values()), list(differences.values()), {})
  assert 'paired by seed and pruning run, 95 % t-interval over pruning runs' in table


def test_summaries_and_differences_pair_by_seed():
  rows = [row('aws', 'signed', 2, 0.90), row('aws', 'signed', 3, 0.80), row('aws', 'mask', 2, 0.70),
          row('aws', 'mask', 3, 0.75), row('lrr', 'signed', 3, 0.60), row('dense', 'dense', 2, 0.95),
          row('dense', 'dense', 3, 0.85), row('dense', 'dense', 4, 0.99)]
  summaries = {(s['method'], s['start']): s for s in study.group_summaries(rows)}
  np.testing.assert_allclose([summaries['aws', 'signed'][k] for k in ('mean', 'std')], [0.85, math.sqrt(0.005)])
  assert summaries['lrr', 'signed']['n'] == 1 and math.isnan(summaries['lrr', 'signed']['std'])
  differences = {d['label']: d for d in study.comparisons(rows, ('aws', 'lrr'))}
  assert set(differences) == {'AWS signed − dense', 'AWS signed − LRR signed', 'AWS signed − AWS mask'}
  # Seed 4 of dense has no AWS partner: the pairs are (0.90 − 0.95, 0.80 − 0.85). Signed − mask: 0.20 and 0.05,
  # mean 0.125, std 0.15 / √2, standard error 0.075.
  np.testing.assert_allclose(differences['AWS signed − dense']['mean'], -0.05)
  np.testing.assert_allclose(differences['AWS signed − dense']['half_width'], 0.0, atol=1e-12)
  np.testing.assert_allclose(differences['AWS signed − AWS mask']['mean'], 0.125)
  np.testing.assert_allclose(differences['AWS signed − AWS mask']['half_width'], 12.706205 * 0.075, rtol=1e-6)
  assert differences['AWS signed − LRR signed']['n'] == 1
  assert math.isnan(differences['AWS signed − LRR signed']['half_width'])
  table = study.markdown(study.group_summaries(rows), list(differences.values()), {})
  assert '| AWS signed − LRR signed | accuracy (points) | 3 | 20.00 | n/a | n/a | 1 |' in table
  assert '| AWS signed − AWS mask | accuracy (points) | 3 | 12.50 | 95.30 | [-82.80, 107.80] | 2 |' in table
  assert '| dense | dense | — | 100.00 | 93.00 | 7.21 | 3 |' in table


@pytest.mark.parametrize('overrides, message', [
    ({'study.starts': ('signed', 'bogus')}, "--config.study.starts has 'bogus'"),
    ({'study.methods': ('aws', 'nope')}, "--config.study.methods has 'nope'"),
    ({'study.source_rounds': (-1, 3)}, '--config.study.source_rounds has 3, never reached by aws'),
    ({'study.methods': ('aws', 'oneshot'), 'study.source_rounds': (2,)}, 'has 2, never reached by oneshot'),
    ({'study.seeds': ()}, '--config.study.seeds is empty'),
    ({'study.methods': ()}, '--config.study.methods is empty'),
    ({'study.seeds': (2, 3, 2)}, '--config.study.seeds=(2, 3, 2) names one twice'),
    ({'study.pruning_seeds': (1, 5, 1)}, '--config.study.pruning_seeds=(1, 5, 1) names one twice'),
    ({'study.pruning_seeds': (1, -1)}, '--config.study.pruning_seeds=(1, -1): seeds must be non-negative'),
])
def test_bad_grids_fail_before_anything_is_created(tmp_path, overrides, message):
  workdir = tmp_path / 'study'
  with pytest.raises(UserError, match=re.escape(message)):
    study.run(study_config(**overrides), str(workdir))
  assert not workdir.exists()
  command = [sys.executable, '-m', 'aws_jax.study', f'--config={REPO}/configs/digits.py:study', f'--workdir={workdir}',
             *flags_of({**TINY_STUDY, **overrides})]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 2 and result.stderr.startswith('error: ') and message in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not workdir.exists()


def test_plan_trains_dense_once_from_the_first_methods_last_round():
  config = study_config(**{'study.methods': ('lrr', 'aws', 'oneshot'), 'study.source_rounds': (1, -1),
                           'study.starts': ('dense', 'signed'), 'barrier.lmc': False})
  assert study.plan(config) == {'lrr': [(1, ('signed',)), (2, ('signed', 'dense'))],
                                'aws': [(1, ('signed',)), (2, ('signed',))], 'oneshot': [(1, ('signed',))]}
  config.barrier.lmc = True  # its reference, the retrained network, is trained wherever a start is
  assert study.plan(config)['aws'] == [(1, ('signed', 'retrain')), (2, ('signed', 'retrain'))]


def test_fashion_mnist_config():
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import fashion_mnist  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = fashion_mnist.get_config()
  study.validate(config)
  assert (config.dataset, config.model) == ('fashion_mnist', 'small_cnn')
  assert (1 - config.prune.fraction) ** config.prune.rounds <= 0.11  # at least 89 % sparsity
  assert tuple(config.study.methods) == ('aws', 'lrr') and len(config.study.seeds) == 3
  assert set(config.study.starts) == {'signed', 'mask', 'random_signs', 'random_mask', 'dense'}
  command = fashion_mnist.__doc__.split('Command:\n')[1].splitlines()[0].strip()
  assert command == 'python -m aws_jax.study --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist_study'


def test_fashion_mnist_paper_preset():
  """The paper preset holds what the paper's argument needs: at most 5 % of the weights, AWS and LRR, >= 3 seeds,
  the starts signed, signed_keep_norm, mask, retrain (the LMC reference) and dense, and both barriers."""
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import fashion_mnist  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = fashion_mnist.get_config('paper')
  study.validate(config)
  assert (1 - config.prune.fraction) ** config.prune.rounds <= 0.05
  assert tuple(config.study.methods) == ('aws', 'lrr') and len(config.study.seeds) >= 3
  assert config.barrier.lmc and config.barrier.sgd_noise and config.barrier.psi_reset
  trained = {start for _, starts in study.plan(config)['aws'] for start in starts}
  assert trained == {'signed', 'signed_keep_norm', 'mask', 'retrain', 'dense'}
  with pytest.raises(ValueError, match='unknown preset'):
    fashion_mnist.get_config('nope')


def test_import_is_light():
  """The command line answers a bad grid before JAX, matplotlib or SciPy load."""
  code = 'import sys, aws_jax.study; print(sorted({"jax", "matplotlib", "scipy"} & set(sys.modules)))'
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  assert result.stdout.strip() == '[]', result.stderr


def test_sign_changes_figure(tmp_path):
  runs = []
  for method, flips in (('aws', (0.0, 0.1, 0.15)), ('lrr', (0.0, 0.2, 0.3))):
    directory = tmp_path / method
    directory.mkdir()
    rounds = [{'round': k, 'method': method, 'fraction_left': 0.8 ** k, 'test_accuracy': 0.9,
               'signs_changed_from_init': flip, 'signs_changed_from_previous': flip / 2} for k, flip in
              enumerate(flips)]
    pathlib.Path(RunDir(directory).results).write_text(json.dumps({'rounds': rounds, 'final': []}))
    pathlib.Path(RunDir(directory).config).write_text(json.dumps({'method': method}))
    runs.append(str(directory))
  lines = plots.plot_sign_changes(runs, str(tmp_path / 'signs.png'))
  np.testing.assert_allclose(lines['signs_changed_from_init']['LRR']['y'], [0, 20, 30])
  np.testing.assert_allclose(lines['signs_changed_from_previous']['AWS']['x'], [100, 80, 64])
  np.testing.assert_allclose(lines['signs_changed_from_previous']['AWS']['y'], [0, 5, 7.5])
  out = tmp_path / 'figures'
  result = subprocess.run([sys.executable, '-m', 'aws_jax.plots', f'--workdirs={",".join(runs)}', f'--out={out}'],
                          cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [str(out / 'accuracy_vs_sparsity.png'), str(out / 'signs.png')]


@pytest.mark.long
def test_digits_study_runs_then_widens(tmp_path):
  workdir = tmp_path / 'study'
  command = [sys.executable, '-m', 'aws_jax.study', f'--config={REPO}/configs/digits.py:study', f'--workdir={workdir}',
             *flags_of({**TINY_STUDY, 'study.starts': STARTS})]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_csv(StudyDir(workdir).csv)
  assert tuple(rows[0]) == study.csv_fields()
  grid = {(r['method'], r['start'], r['source_round'], r['seed']) for r in rows}
  expected = {(m, s, '2', str(seed)) for m in ('aws', 'lrr') for s in TRAINED for seed in (2, 3)}
  assert grid == expected | {('dense', 'dense', '', '2'), ('dense', 'dense', '', '3')} and len(rows) == len(grid)
  for r in rows:
    assert 0 <= float(r['test_accuracy']) <= 1 and r['epochs'] == '2'
    np.testing.assert_allclose(float(r['fraction_left']), 1.0 if r['start'] == 'dense' else 0.64, atol=0.01)
    if r['start'] in ('signed', 'signed_keep_norm', 'mask'):  # the same mask as retrain: both barriers defined
      assert 0 <= float(r['lmc_barrier']) <= 100 and 0 <= float(r['sgd_noise_barrier']) <= 100, r
    if r['start'] == 'retrain':
      assert r['lmc_barrier'] == '' and float(r['sgd_noise_barrier']) >= 0
  table = pathlib.Path(StudyDir(workdir).markdown).read_text()
  for label in ('AWS signed − dense', 'AWS signed − LRR signed', 'AWS signed − AWS mask',
                'LRR signed_keep_norm − LRR signed', 'LRR signed − LRR mask', 'Pruning stage: aws',
                'Pruning stage: lrr', "The paper's table: accuracy (%), barriers (points of test error)",
                'Time account (seconds)'):
    assert f'| {label} |' in table or f'## {label}' in table, label
  assert '## Differences' in result.stdout  # the same tables, printed at the end
  for name in ('accuracy_vs_sparsity.png', 'psi_reset_barrier.png', 'starts.png', 'lmc.png'):
    with open(StudyDir(workdir).figure(name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', name
  for method in ('aws', 'lrr'):  # ordinary run directories; dense trained in the first method's only
    results = json.loads(pathlib.Path(StudyDir(workdir).run(method).results).read_text())
    assert [r['round'] for r in results['rounds']] == [0, 1, 2]
    assert ({f['mode'] for f in results['final']} == set(TRAINED) | ({'dense'} if method == 'aws' else set()))

  analysed = {**file_times(StudyDir(workdir).run('aws').analyses), **file_times(StudyDir(workdir).run('lrr').analyses)}
  rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  analyses_dirs = [StudyDir(workdir).run(method).analyses for method in ('aws', 'lrr')]
  assert {**file_times(analyses_dirs[0]), **file_times(analyses_dirs[1])} == analysed
  assert [without_wall(r) for r in read_csv(StudyDir(workdir).csv)] == [without_wall(r) for r in rows]

  checkpoints = [StudyDir(workdir).run(method).checkpoint_root for method in ('aws', 'lrr')]
  before = {**file_times(checkpoints[0]), **file_times(checkpoints[1])}
  widened = study.run(study_config(**{'study.starts': STARTS, 'study.seeds': (2, 3, 4)}), str(workdir))
  after = {**file_times(checkpoints[0]), **file_times(checkpoints[1])}
  assert {p: after[p] for p in before} == before  # nothing trained before was trained again
  new = {(r['method'], r['start'], r['seed']) for r in widened['rows']} - {(m, s, int(seed)) for m, s, _, seed in grid}
  assert new == {(m, s, 4) for m in ('aws', 'lrr') for s in TRAINED} | {('dense', 'dense', 4)}
  pairs = {p: t for p, t in analysed.items() if os.sep + 'pairs' + os.sep in p}
  widened_times = {**file_times(analyses_dirs[0]), **file_times(analyses_dirs[1])}
  assert {p: widened_times[p] for p in pairs} == pairs  # each pair's barrier measured once
  signed = [r for r in widened['rows'] if (r['method'], r['start']) == ('aws', 'signed')]
  assert len(signed) == 3 and all(r['sgd_noise_barrier'] is not None for r in signed)
  assert len(read_csv(StudyDir(workdir).csv)) == len(grid) + len(new)
  assert {d['n'] for d in widened['differences']} == {3}


def test_a_study_stopped_during_a_barrier_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
  """Analyses are stored only once complete: a study killed inside an error barrier recomputes that barrier."""
  from aws_jax import barrier  # pylint: disable=import-outside-toplevel
  overrides = {'study.methods': ('aws',), 'study.starts': ('signed',), 'prune.rounds': 1, 'final.epochs': 1,
               'checkpoint_every_epochs': 1}
  study.run(study_config(**overrides), str(tmp_path / 'whole'))
  calls, error_curve = [], barrier.error_curve

  def killed_on_the_third(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return error_curve(*args, **kwargs)

  monkeypatch.setattr(barrier, 'error_curve', killed_on_the_third)
  with pytest.raises(KeyboardInterrupt):
    study.run(study_config(**overrides), str(tmp_path / 'stopped'))
  monkeypatch.undo()
  study.run(study_config(**overrides), str(tmp_path / 'stopped'))
  whole, stopped = (read_csv(StudyDir(tmp_path / name).csv) for name in ('whole', 'stopped'))
  assert [without_wall(r) for r in stopped] == [without_wall(r) for r in whole]
  assert all(r['sgd_noise_barrier'] != '' for r in whole if r['start'] == 'signed')


def test_the_pruning_table_gives_the_psi_reset_barrier_with_its_ends():
  """A barrier is read with its ends: the recalibrated accuracy (α = 1) and the test error with ψ reset (α = 0)."""
  record = {'round': 9, 'fraction_left': 0.0404, 'test_accuracy': 0.1806, 'recalibrated_test_accuracy': 0.8286,
            'psi_reset_barrier': 12.59, 'psi_reset_test_error': [42.31, 33.6, 24.88, 19.04, 17.14]}
  table = study.markdown([], [], {'lrr': [record], 'aws': [{'round': 0, 'fraction_left': 1.0, 'test_accuracy': 0.5}]})
  assert '| 9 | 4.04 | 18.06 | 82.86 | 42.31 | 12.59 |' in table
  assert '| 0 | 100.00 | 50.00 | n/a | n/a | n/a |' in table


def test_pruning_seeds_widen_a_study_with_pruning_runs(tmp_path):
  """study.pruning_seeds adds a pruning run per seed beside the existing one (<method>_seed<p>/), trains dense once,
  and makes the pruning runs the units of the differences; the run with config.seed is the one already there."""
  overrides = {'study.methods': ('aws', 'lrr'), 'study.starts': ('signed', 'dense'), 'barrier.lmc': False,
               'barrier.sgd_noise': False}
  workdir = tmp_path / 'study'
  first = study.run(study_config(**overrides), str(workdir))
  assert {d['n'] for d in first['differences']} == {2}  # seeds
  checkpoints = {m: file_times(StudyDir(workdir).run(m).checkpoint_root) for m in ('aws', 'lrr')}
  seed = study_config().seed
  widened = study.run(study_config(**overrides, **{'study.pruning_seeds': (seed, seed + 6)}), str(workdir))
  assert {m: file_times(StudyDir(workdir).run(m).checkpoint_root) for m in ('aws', 'lrr')} == checkpoints
  assert set(widened['run_dirs']) == {'aws', 'lrr', f'aws_seed{seed + 6}', f'lrr_seed{seed + 6}'}
  other = json.loads(pathlib.Path(StudyDir(workdir).run(f'aws_seed{seed + 6}').results).read_text())
  assert {f['mode'] for f in other['final']} == {'signed'}  # dense: with the first pruning seed's runs only
  assert json.loads(pathlib.Path(StudyDir(workdir).run(f'aws_seed{seed + 6}').config).read_text())['seed'] == seed + 6
  # another initialisation and data order: another pruning run (its warm-up's train loss is another number)
  assert other['rounds'][0]['train_loss'] != first['rounds']['aws'][0]['train_loss']
  rows = read_csv(StudyDir(workdir).csv)
  assert {(r['method'], r['pruning_seed']) for r in rows} == {('aws', str(seed)), ('aws', str(seed + 6)),
                                                              ('lrr', str(seed)), ('lrr', str(seed + 6)),
                                                              ('dense', str(seed))}
  assert {d['label']: d['n'] for d in widened['differences']} == {'AWS signed − dense': 2,
                                                                  'AWS signed − LRR signed': 2}  # runs
  table = pathlib.Path(StudyDir(workdir).markdown).read_text()
  assert f'## Pruning stage: lrr_seed{seed + 6}' in table and 'over pruning runs' in table


@pytest.mark.long
def test_parallel_runs_the_pruning_seeds_at_once_stops_on_sigterm_and_resumes(tmp_path):
  """`--parallel` runs each pruning seed's part in a process of its own on one workdir (each run directory locked
  while used), the dense start in the first one's only; SIGTERM reaches every process, which stops with a
  checkpoint; the same command resumes and writes the combined tables, after which the full grid trains nothing
  more; a study that needs a directory in use is refused on one line."""
  # Rounds of 4 epochs on all of digits' images: the SIGTERM below lands before round 2 ends, even where one process
  # ended its warm-up seconds before the other (a loaded machine).
  overrides = {'study.methods': ('aws',), 'study.starts': ('signed', 'mask', 'dense'), 'barrier.lmc': False,
               'barrier.sgd_noise': False, 'barrier.psi_reset': False, 'prune.rounds': 2, 'prune.round_epochs': 4,
               'train_examples': 0}
  workdir, seed = tmp_path / 'study', study_config().seed
  both = {**overrides, 'study.pruning_seeds': (seed, seed + 6)}
  command = [sys.executable, '-m', 'aws_jax.study', f'--config={REPO}/configs/digits.py:study', f'--workdir={workdir}',
             *flags_of({**TINY_STUDY, **both}), '--parallel']
  logs = [pathlib.Path(StudyDir(workdir).log(p)) for p in (seed, seed + 6)]
  stopped = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + SUBPROCESS_TIMEOUT
  while not all(log.exists() and 'round  0 |' in log.read_text() for log in logs):  # both past their warm-up
    assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()
    time.sleep(0.1)
  stopped.send_signal(signal.SIGTERM)
  _, stderr = stopped.communicate(timeout=SUBPROCESS_TIMEOUT)
  assert stopped.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith('error: stopped by SIGTERM'), stderr[-3000:]
  assert all("stopped by SIGTERM" in log.read_text() for log in logs), [log.read_text()[-500:] for log in logs]
  assert not os.path.exists(StudyDir(workdir).csv)
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'pruning seed {seed + 6}: done' in resumed.stdout
  assert f'[pruning seed {seed + 6}] study: aws, pruning seed {seed + 6}, in {workdir}' in resumed.stdout
  assert f'[pruning seed {seed + 6}] round  2 |' in resumed.stdout  # the processes' round lines, followed
  assert f'[pruning seed {seed}] final signed ' in resumed.stdout and '## Final trainings' in resumed.stdout
  trained = {**file_times(StudyDir(workdir).run('aws').checkpoint_root),
             **file_times(StudyDir(workdir).run(f'aws_seed{seed + 6}').checkpoint_root)}
  other = json.loads(pathlib.Path(StudyDir(workdir).run(f'aws_seed{seed + 6}').results).read_text())
  assert {f['mode'] for f in other['final']} == {'signed', 'mask'}  # dense: with the first pruning seed's runs
  combined = read_csv(StudyDir(workdir).csv)
  full = study.run(study_config(**both), str(workdir))
  assert {**file_times(StudyDir(workdir).run('aws').checkpoint_root),
          **file_times(StudyDir(workdir).run(f'aws_seed{seed + 6}').checkpoint_root)} == trained
  assert read_csv(StudyDir(workdir).csv) == combined
  assert {(d['label'], d['n']) for d in full['differences']} == {('AWS signed − AWS mask', 2),
                                                                 ('AWS signed − dense', 2)}
  with Lock(StudyDir(workdir).run('aws')):
    with pytest.raises(UserError, match='in use by a running aws_jax process'):
      study.run(study_config(**overrides), str(workdir))


def test_a_failed_parallel_process_is_reported_on_one_line_with_its_log(tmp_path):
  config = study_config(**{'study.pruning_seeds': (1, 7)})
  arguments = [f'--config={tmp_path}/missing.py', f'--workdir={tmp_path}/study']  # each process fails at once
  with pytest.raises(UserError, match=r"pruning seed 1's process failed \(exit 2\): error: .*missing\.py.*whole "
                                      r"output: .*study_seed1\.log"):
    study.run_at_once(config, str(tmp_path / 'study'), arguments)
  assert 'missing.py' in pathlib.Path(StudyDir(tmp_path / 'study').log(7)).read_text()


def test_time_account_sums_each_category_over_rounds_and_final_trainings():
  results = {'rounds': [{'round': 0, 'time_train_s': 1.0, 'wall_s': 9.0}, {'round': 1, 'time_train_s': 2.0,
                                                                            'time_barrier_s': 0.5}],
             'final': [{'seed': 2, 'time_train_s': 3.0, 'time_eval_s': 0.25, 'test_accuracy': 0.9}]}
  assert study.time_account(results) == {'train': 6.0, 'barrier': 0.5, 'eval': 0.25}


def test_without_flags_drops_a_flag_in_each_form():
  arguments = ['--config=c.py', '--config.study.starts', "('signed',)", '--parallel', "--config.seed=3",
               '--noparallel', '--config.study.starts=("mask",)', '--', '--parallel']
  assert study.without_flags(arguments, ('parallel', 'config.study.starts')) == [
      '--config=c.py', '--config.seed=3', '--', '--parallel']


@pytest.mark.parametrize('variants, message', [
    ((('a', {}), ('a', {'optimizer.lr': 0.1})), 'names a variant twice'),
    ((('a', {'optimizer.lr_typo': 0.1}),), "'optimizer.lr_typo', which is not a config key"),
    ((('a', {'workdir': 'elsewhere'}),), "'workdir', which is not a config key"),
    ((('a', {'study.seeds': (5,)}),), 'picks what to run'),
    ((('a', {'method': 'imp'}),), 'use --config.study.methods'),
    ((('a', {'optimizer.lr': -1.0}),), 'a: --config.optimizer.lr=-1.0 must be positive'),
    ((('a', {'optimizer.lr': 'fast'}),), "a sets optimizer.lr='fast'"),
    ((('a/b', {}),), 'is no variant name'),
    (('a',), 'must be pairs of a name and overrides'),
])
def test_bad_variants_are_refused_on_one_line_before_anything_runs(tmp_path, variants, message):
  with pytest.raises(UserError, match=re.escape(message)) as error:
    study.run(study_config(**{'study.variants': variants}), str(tmp_path / 'study'))
  assert '\n' not in str(error.value) and not (tmp_path / 'study').exists()


def test_variants_share_a_setup_only_where_data_and_model_are_the_same():
  (_, paper), (_, decay), (_, smaller) = study.variants(study_config(**{'study.variants': (
      ('paper', {}), ('decay', {'optimizer.weight_decay': 5e-3, 'optimizer.norm_weight_decay': False}),
      ('smaller', {'train_examples': 500}))}))
  assert decay.optimizer.weight_decay == 5e-3 and paper.optimizer.weight_decay != 5e-3
  assert study.grid.shares_setup(paper, decay) and not study.grid.shares_setup(paper, smaller)


@pytest.mark.long
def test_variants_are_studies_side_by_side_compared_cell_by_cell_and_a_new_one_trains_alone(tmp_path):
  """Each variant gets the grid in its own study directory under the same seeds; study.csv has a variant column,
  study.md the differences between variants; a rerun trains nothing; adding a variant trains only it."""
  workdir = tmp_path / 'study'
  base = {'study.methods': ('aws',), 'study.starts': ('signed',), 'prune.rounds': 1, 'final.epochs': 1,
          'checkpoint_every_epochs': 1, 'barrier.sgd_noise': False}
  two = (('wd5e-4', {}), ('wd5e-3', {'optimizer.weight_decay': 5e-3}))
  first = study.run(study_config(**base, **{'study.variants': two}), str(workdir))
  rows = read_csv(StudyDir(workdir).csv)
  assert tuple(rows[0]) == study.csv_fields(variants=True)
  assert {(r['variant'], r['start'], r['seed']) for r in rows} == {
      (v, s, seed) for v, _ in two for s in ('signed', 'retrain') for seed in ('2', '3')}
  assert set(first['run_dirs']) == {'wd5e-4/aws', 'wd5e-3/aws'}
  for name, _ in two:
    assert first['run_dirs'][f'{name}/aws'] == StudyDir(workdir).variant(name).run('aws').root
  decayed = json.loads(pathlib.Path(StudyDir(workdir).variant('wd5e-3').run('aws').config).read_text())
  assert decayed['optimizer.weight_decay'] == 5e-3
  between = {d['label']: d for d in first['between_variants']}
  assert set(between) == {'AWS signed: wd5e-3 − wd5e-4', 'AWS retrain: wd5e-3 − wd5e-4'}
  by_key = {(r['variant'], r['start'], r['seed']): float(r['test_accuracy']) for r in rows}
  np.testing.assert_allclose(between['AWS signed: wd5e-3 − wd5e-4']['mean'], np.mean(
      [by_key['wd5e-3', 'signed', s] - by_key['wd5e-4', 'signed', s] for s in ('2', '3')]))
  table = pathlib.Path(StudyDir(workdir).markdown).read_text()
  assert '# Variant wd5e-3: {\'optimizer.weight_decay\': 0.005}' in table
  assert '## Differences between variants' in table and '| AWS signed: wd5e-3 − wd5e-4 |' in table

  trained = file_times(StudyDir(workdir).variant('wd5e-4').run('aws').checkpoint_root)
  again = study.run(study_config(**base, **{'study.variants': two}), str(workdir))
  assert [without_wall(r) for r in read_csv(StudyDir(workdir).csv)] == [without_wall(r) for r in rows]
  three = (*two, ('lr0.05', {'optimizer.lr': 0.05}))
  widened = study.run(study_config(**base, **{'study.variants': three}), str(workdir))
  assert file_times(StudyDir(workdir).variant('wd5e-4').run('aws').checkpoint_root) == trained  # nothing retrained
  assert len(widened['rows']) == len(again['rows']) * 3 // 2
  assert {d['variant'] for d in widened['between_variants']} == {'wd5e-3', 'lr0.05'}
