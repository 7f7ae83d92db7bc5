"""Tests for aws_jax.plots: the figures' data, valid PNG files, the command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from aws_jax import plots
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  height, width, _ = mpimg.imread(path).shape
  assert height > 300 and width > 300


def write_run(directory, method, final, barriers=True, values=None):
  """A workdir as the protocol leaves it: results.json (3 rounds) and config.json; `values`: its ψ-reset barriers."""
  os.makedirs(directory)
  rounds = [{'round': k, 'method': method, 'fraction_left': 0.8 ** k, 'test_accuracy': acc, 'train_accuracy': 1.0}
            for k, acc in enumerate((0.95, 0.94, 0.93))]
  if barriers:
    for r, value in zip(rounds, values or ((0.5, 3.0, 7.5) if method == 'lrr' else (0.2, 0.4, 0.6))):
      r['psi_reset_barrier'] = value
  with open(RunDir(directory).results, 'w') as f:
    json.dump({'rounds': rounds, 'final': final}, f)
  with open(RunDir(directory).config, 'w') as f:
    json.dump({'method': method, 'model': 'small_cnn', 'dataset': 'digits'}, f)
  return str(directory)


def final(mode, source_round, seed, accuracy):
  return {'mode': mode, 'source_round': source_round, 'seed': seed, 'fraction_left': 0.8 ** source_round,
          'test_accuracy': accuracy, 'epochs': 20}


@pytest.fixture
def runs(tmp_path):
  aws = write_run(tmp_path / 'aws', 'aws', [final('signed', 2, 2, 0.90), final('signed', 2, 3, 0.92),
                                            final('mask', 2, 2, 0.50), final('retrain', 2, 2, 0.93)])
  aws_deeper = write_run(tmp_path / 'aws_r1', 'aws', [final('signed', 1, 2, 0.94)])
  lrr = write_run(tmp_path / 'lrr', 'lrr', [final('signed', 2, 2, 0.40)])
  return [aws, aws_deeper, lrr]


def test_accuracy_vs_sparsity_has_one_line_per_method_and_start(runs, tmp_path):
  path = str(tmp_path / 'accuracy.png')
  lines = plots.plot_accuracy_vs_sparsity(runs, path)['accuracy']
  assert_png(path)
  assert set(lines) == {'AWS pruning stage', 'LRR pruning stage', 'AWS signed', 'AWS mask', 'AWS retrain',
                        'LRR signed', 'dense'}
  # Signed transfers of both AWS workdirs on one line, 100·0.8^k % left, decreasing; seeds 2 and 3 averaged.
  np.testing.assert_allclose(lines['AWS signed']['x'], [80, 64])
  np.testing.assert_allclose(lines['AWS signed']['y'], [94, 91])
  np.testing.assert_allclose(lines['LRR signed']['y'], [40])
  np.testing.assert_allclose(lines['AWS pruning stage']['x'], [100, 80, 64])
  np.testing.assert_allclose(lines['AWS pruning stage']['y'], [95, 94, 93])
  np.testing.assert_allclose(lines['dense']['y'], [95, 95])


def test_psi_reset_barrier_per_round_and_method(runs, tmp_path):
  path = str(tmp_path / 'psi.png')
  lines = plots.plot_psi_reset_barriers(runs, path)['barrier']
  assert_png(path)
  np.testing.assert_allclose(lines['LRR']['y'], [0.5, 3.0, 7.5])
  np.testing.assert_allclose(lines['AWS']['x'], [100, 80, 64])
  np.testing.assert_allclose(lines['AWS']['y'], [0.2, 0.4, 0.6])
  assert plots.plot_psi_reset_barriers(runs, path)['spread'] == {'AWS': [0.0, 0.0, 0.0]}  # two equal AWS runs
  other = write_run(tmp_path / 'lrr_seed7', 'lrr', [], values=(1.5, 5.0, 4.5))  # another pruning run of LRR
  drawn = plots.plot_psi_reset_barriers([*runs, other], path)
  np.testing.assert_allclose(drawn['barrier']['LRR']['y'], [1.0, 4.0, 6.0])
  np.testing.assert_allclose(drawn['spread']['LRR'], np.sqrt([0.5, 2.0, 4.5]))  # |a − b| / √2
  bare = write_run(tmp_path / 'bare', 'aws', [], barriers=False)
  with pytest.raises(UserError, match='no ψ-reset barriers'):
    plots.plot_psi_reset_barriers([bare], path)


def test_barrier_curves_overlaid(tmp_path):
  alphas = np.linspace(0, 1, 5).tolist()
  curves = {'AWS ψ reset': {'alphas': alphas, 'test_error': [5, 6, 7, 6, 5], 'curve': [0, 1, 2, 1, 0],
                            'barrier': 2.0},
            'LRR ψ reset': {'alphas': alphas, 'test_error': [80, 60, 40, 20, 4], 'curve': [38, 18, -2, -22, -38],
                            'barrier': 38.0}}
  path = str(tmp_path / 'barriers.png')
  drawn = plots.plot_barriers(curves, path)
  assert_png(path)
  assert drawn['test_error']['AWS ψ reset'] == {'x': alphas, 'y': [5, 6, 7, 6, 5]}
  assert drawn['curve']['LRR ψ reset (barrier 38.00)']['y'] == [38, 18, -2, -22, -38]


def test_command_line_writes_every_figure_it_can(runs, tmp_path):
  barrier_file = tmp_path / 'curve.json'
  barrier_file.write_text(json.dumps({'label': 'AWS round 2: ψ reset', 'alphas': [0, 1], 'test_error': [9, 5],
                                      'curve': [2, -2], 'barrier': 2}))
  out = tmp_path / 'figures'
  command = [sys.executable, '-m', 'aws_jax.plots', f'--workdirs={",".join(runs)}', f'--barriers={barrier_file}',
             f'--out={out}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr
  names = ['accuracy_vs_sparsity.png', 'psi_reset_barrier.png', 'barriers.png']
  assert result.stdout.split() == [str(out / name) for name in names]
  for name in names:
    assert_png(out / name)
  result = subprocess.run([sys.executable, '-m', 'aws_jax.plots', f'--workdirs={tmp_path / "nothing"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 2 and result.stderr.startswith('error: no results.json in'), result.stderr


def test_sparsity_axis_keeps_every_level_in_view_when_ticks_are_thinned():
  """Ten rounds of 30 % pruning: ticks at every other level, but the sparsest (4.04 %) still inside the axis."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  levels = [100 * 0.7 ** k for k in range(10)]
  ax = pyplot.figure().subplots()
  ax.plot(levels, range(10))
  plots.common._sparsity_axis(ax, levels)  # pylint: disable=protected-access
  assert len(ax.get_xticks()) < len(levels) and min(ax.get_xticks()) == min(levels)
  high, low = ax.get_xlim()
  assert high > max(levels) and low < min(levels)
  pyplot.close('all')


@pytest.mark.parametrize('pairs', [0, 2])
def test_comparison_draws_a_differences_panel_only_when_there_are_differences(tmp_path, monkeypatch, pairs):
  """A grid with no pair to compare (one start, say) gets the accuracy panel alone, not an empty differences panel."""
  figures = []
  make_figure = plots.common._figure  # pylint: disable=protected-access
  monkeypatch.setattr(plots.comparisons, '_figure',  # where plot_comparison looks it up
                      lambda **kwargs: figures.append(make_figure(**kwargs)) or figures[-1])
  accuracies = {'aws signed r3': (97.5, 0.4), 'aws mask r3': (96.0, float('nan')), 'lrr signed r3': (96.8, 0.6)}
  differences = dict(list({'aws signed − aws mask r3': (1.5, 0.3), 'aws − lrr signed r3': (0.7, 0.5)}.items())[:pairs])
  path = str(tmp_path / 'starts.png')
  drawn = plots.plot_comparison(accuracies, differences, path)
  assert_png(path)
  [figure] = figures
  assert len(figure.axes) == (2 if pairs else 1)
  np.testing.assert_equal(drawn['accuracy'], accuracies)  # NaN (no interval) equal to NaN
  assert drawn.get('difference', {}) == differences
  titles = [ax.get_title() for ax in figure.axes]
  assert ('differences' in titles) == bool(pairs) and 'final trainings' in titles
