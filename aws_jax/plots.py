"""Figures for papers, drawn with matplotlib's Agg canvas (no pyplot, no display, no global backend change).

Each `plot_*` writes a PNG and returns the data of the lines it drew, {axis: {label: {'x': [...], 'y': [...]}}},
read back from the axes. Command line (several workdirs, e.g. an AWS run and an LRR run):

  python -m aws_jax.plots --workdirs=runs/digits,runs/digits_lrr --out=runs/figures [--barriers=a.json,b.json]

writes accuracy_vs_sparsity.png (test accuracy against % weights left per method and final-stage start),
psi_reset_barrier.png (the error barrier to the ψ-reset network after every pruning round) and, with
--barriers (JSON files of `python -m aws_jax.barrier`), barriers.png with their curves overlaid.
"""
import collections
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from aws_jax import cli
from aws_jax.errors import UserError

MODE_COLORS = {'signed': 'C0', 'mask': 'C1', 'retrain': 'C2', 'pruning stage': 'C7'}
METHOD_STYLES = {'aws': ('-', 'o'), 'lrr': ('--', 's')}


def _lines(ax) -> dict:
  """{label: {'x': [...], 'y': [...]}} of the labelled lines drawn on `ax`."""
  return {line.get_label(): {'x': np.asarray(line.get_xdata(), float).tolist(),
                             'y': np.asarray(line.get_ydata(), float).tolist()}
          for line in ax.get_lines() if not line.get_label().startswith('_')}


def plot_barriers(curves: Mapping[str, dict], path: str) -> dict:
  """Test error along α (left) and error(α) − mean of the endpoints (right), one line per labelled curve.

  `curves` maps a label to a dict with 'alphas', 'test_error', 'curve' and 'barrier' (`barrier.error_curve`).
  """
  fig = Figure(figsize=(10, 4), layout='constrained')
  error_ax, curve_ax = fig.subplots(1, 2)
  for label, c in curves.items():
    error_ax.plot(c['alphas'], c['test_error'], marker='o', label=label)
    curve_ax.plot(c['alphas'], c['curve'], marker='o', label=f'{label} (barrier {c["barrier"]:.2f})')
  error_ax.set(xlabel='α   (θ(α) = α·θ_a + (1 − α)·θ_b)', ylabel='test error (%)', title='error along the path')
  curve_ax.axhline(0, color='0.6', linewidth=0.8, linestyle=':')
  curve_ax.set(xlabel='α', ylabel='error(α) − (error(0) + error(1)) / 2  (points)', title='error barrier')
  for ax in (error_ax, curve_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.savefig(path, dpi=150)
  return {'test_error': _lines(error_ax), 'curve': _lines(curve_ax)}


def load_results(workdir: str) -> tuple[dict, dict]:
  """(results.json, config.json) of a workdir; config.json is {} where absent."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise UserError(f'no results.json in {workdir}: run `python -m aws_jax.main --workdir={workdir} ...` first')
  with open(path) as f:
    results = json.load(f)
  config_path = os.path.join(workdir, 'config.json')
  config = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return results, config


def _method(results: dict, config: dict) -> str:
  return config.get('method') or (results['rounds'][0]['method'] if results['rounds'] else 'run')


def _mean_lines(points: Mapping[tuple, list]) -> dict:
  """{key: (x, mean y, std y)} sorted by x, from {key: [(x, y), ...]}."""
  lines = {}
  for key, pairs in points.items():
    by_x = collections.defaultdict(list)
    for x, y in pairs:
      by_x[round(x, 6)].append(y)
    xs = sorted(by_x, reverse=True)
    lines[key] = (xs, [float(np.mean(by_x[x])) for x in xs], [float(np.std(by_x[x])) for x in xs])
  return lines


def _title(configs: Sequence[dict]) -> str:
  setups = {(c.get('model'), c.get('dataset')) for c in configs}
  if len(setups) == 1 and None not in next(iter(setups)):
    model, dataset = next(iter(setups))
    return f'{model} on {dataset}'
  return ''


def _sparsity_axis(ax, xs) -> None:
  """Log-scale % weights left, decreasing to the right, ticks at (at most 8 of) the plotted levels."""
  ticks = sorted(set(xs), reverse=True)
  ticks = ticks[::math.ceil(len(ticks) / 8)] if ticks else ticks
  ax.set_xscale('log')
  ax.set_xticks(ticks, [f'{t:.3g}' for t in ticks])
  ax.minorticks_off()
  if ticks:
    ax.set_xlim(max(ticks) * 1.15, min(ticks) / 1.15)
  ax.set_xlabel('weights left (%)')
  ax.grid(alpha=0.3)


def plot_accuracy_vs_sparsity(workdirs: Sequence[str], path: str) -> dict:
  """Test accuracy (%) against % weights left: each method's pruning stage and final trainings, one line per start.

  Final trainings of the same method and start are gathered over workdirs and source rounds; seeds at one level are
  averaged (the band is ± one standard deviation). The dense warm-up (round 0) is the horizontal line.
  """
  stage_points, final_points, dense, configs = collections.defaultdict(list), collections.defaultdict(list), [], []
  for workdir in workdirs:
    results, config = load_results(workdir)
    configs.append(config)
    method = _method(results, config)
    for r in results['rounds']:
      stage_points[method, 'pruning stage'].append((100 * r['fraction_left'], 100 * r['test_accuracy']))
      if r['round'] == 0:
        dense.append(100 * r['test_accuracy'])
    for f in results['final']:
      final_points[method, f['mode']].append((100 * f['fraction_left'], 100 * f['test_accuracy']))
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.subplots()
  all_x = []
  for (method, mode), (xs, ys, stds) in {**_mean_lines(stage_points), **_mean_lines(final_points)}.items():
    linestyle, marker = METHOD_STYLES.get(method, ('-.', '^'))
    ax.plot(xs, ys, color=MODE_COLORS.get(mode), linestyle=linestyle, marker=marker, markersize=4,
            label=f'{method.upper()} {mode}', alpha=0.6 if mode == 'pruning stage' else 1.0)
    if any(stds):
      ax.fill_between(xs, np.subtract(ys, stds), np.add(ys, stds), color=MODE_COLORS.get(mode), alpha=0.15)
    all_x += xs
  if dense:
    ax.axhline(float(np.mean(dense)), color='k', linewidth=0.8, linestyle=':', label='dense')
  _sparsity_axis(ax, all_x)
  ax.set(ylabel='test accuracy (%)', title=_title(configs))
  ax.legend(fontsize='small')
  fig.savefig(path, dpi=150)
  return {'accuracy': _lines(ax)}


def plot_psi_reset_barriers(workdirs: Sequence[str], path: str) -> dict:
  """The error barrier between each pruning round's solution and its ψ-reset counterpart, one line per method."""
  points, configs = collections.defaultdict(list), []
  for workdir in workdirs:
    results, config = load_results(workdir)
    configs.append(config)
    for r in results['rounds']:
      if 'psi_reset_barrier' in r:
        points[_method(results, config)].append((100 * r['fraction_left'], r['psi_reset_barrier']))
  if not points:
    raise UserError(f'no ψ-reset barriers in {", ".join(workdirs)}: the pruning stage records them with '
                    f'--config.barrier.psi_reset=True')
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.subplots()
  all_x = []
  for method, (xs, ys, _) in _mean_lines(points).items():
    linestyle, marker = METHOD_STYLES.get(method, ('-.', '^'))
    ax.plot(xs, ys, linestyle=linestyle, marker=marker, label=method.upper())
    all_x += xs
  _sparsity_axis(ax, all_x)
  ax.set(ylabel='error barrier to the ψ-reset network (points)', title=_title(configs))
  ax.legend(fontsize='small')
  fig.savefig(path, dpi=150)
  return {'barrier': _lines(ax)}


def write_figures(workdirs: Sequence[str], barrier_files: Sequence[str], out: str) -> list[str]:
  """Every figure the inputs allow, in `out`; returns their paths."""
  os.makedirs(out, exist_ok=True)
  written = []
  if workdirs:
    written.append(os.path.join(out, 'accuracy_vs_sparsity.png'))
    plot_accuracy_vs_sparsity(workdirs, written[-1])
    if any('psi_reset_barrier' in r for w in workdirs for r in load_results(w)[0]['rounds']):
      written.append(os.path.join(out, 'psi_reset_barrier.png'))
      plot_psi_reset_barriers(workdirs, written[-1])
  if barrier_files:
    curves = {}
    for name in barrier_files:
      if not os.path.exists(name):
        raise UserError(f'no barrier file {name}: write one with `python -m aws_jax.barrier`')
      with open(name) as f:
        result = json.load(f)
      curves[result.get('label', os.path.basename(name))] = result
    written.append(os.path.join(out, 'barriers.png'))
    plot_barriers(curves, written[-1])
  return written


def main(argv):
  cli.check_no_arguments(argv)
  values = flags.FLAGS
  if not values.workdirs and not values.barriers:
    cli.exit_with('nothing to plot: give --workdirs (with results.json) and/or --barriers (barrier JSON files)')
  try:
    for path in write_figures(values.workdirs or [], values.barriers or [], values.out):
      print(path)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  # Defined here, not at import: aws_jax.barrier imports this module.
  flags.DEFINE_list('workdirs', [], 'Run directories holding results.json (AWS and LRR runs, several sparsities).')
  flags.DEFINE_list('barriers', [], 'Barrier JSON files of `python -m aws_jax.barrier`, overlaid in barriers.png.')
  flags.DEFINE_string('out', 'figures', 'Directory the PNG files are written to.')
  app.run(main, flags_parser=cli.parse_flags)
