"""Figures for papers, drawn with matplotlib's Agg canvas (no pyplot, no display, no global backend change).

Each `plot_*` writes a PNG and returns the data of the lines it drew, {axis: {label: {'x': [...], 'y': [...]}}},
read back from the axes. Command line (several workdirs, e.g. an AWS run and an LRR run):

  python -m aws_jax.plots --workdirs=runs/digits,runs/digits_lrr --out=runs/figures [--barriers=a.json,b.json]

writes accuracy_vs_sparsity.png (test accuracy against % weights left per method and final-stage start),
psi_reset_barrier.png (the error barrier to the ψ-reset network after every pruning round), signs.png (signs changed
since initialisation and since the previous round, where the rounds recorded them) and, with --barriers (JSON files
of `python -m aws_jax.barrier`), barriers.png with their curves overlaid. `python -m aws_jax.study` draws the same
figures for a study, and starts.png (`plot_comparison`).
"""
import collections
import json
import math
import os
import re
from typing import Mapping, Sequence

import numpy as np
from absl import app, flags

from aws_jax import cli, starts
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir

MODE_COLORS = {**{name: start.color for name, start in starts.STARTS.items()}, 'dense': 'k', 'pruning stage': 'C7'}
METHOD_STYLES = {'aws': ('-', 'o'), 'lrr': ('--', 's'), 'imp': (':', 'D'), 'imp_wr': (':', 'v'),
                 'oneshot': ('-.', 'P'), 'random': ('-.', 'x')}  # others: ('-.', '^')


def _figure(**kwargs):
  """A matplotlib Figure on the Agg canvas (matplotlib loads here, not at import: the CLI answers bad input first)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  return Figure(**kwargs)


def _lines(ax) -> dict:
  """{label: {'x': [...], 'y': [...]}} of the labelled lines drawn on `ax`."""
  return {line.get_label(): {'x': np.asarray(line.get_xdata(), float).tolist(),
                             'y': np.asarray(line.get_ydata(), float).tolist()}
          for line in ax.get_lines() if not line.get_label().startswith('_')}


def plot_barriers(curves: Mapping[str, dict], path: str) -> dict:
  """Test error along α (left) and error(α) − mean of the endpoints (right), one line per labelled curve.

  `curves` maps a label to a dict with 'alphas', 'test_error', 'curve' and 'barrier' (`barrier.error_curve`).
  """
  fig = _figure(figsize=(10, 4), layout='constrained')
  error_ax, curve_ax = fig.subplots(1, 2)
  for label, c in curves.items():
    error_ax.plot(c['alphas'], c['test_error'], marker='o', label=label)
    curve_ax.plot(c['alphas'], c['curve'], marker='o', label=f'{label} (barrier {c["barrier"]:.2f})')
  error_ax.set(xlabel='α   (θ(α) = α·θ_a + (1 − α)·θ_b)', ylabel='test error (%)', title='error along the path')
  curve_ax.axhline(0, color='0.6', linewidth=0.8, linestyle=':')
  curve_ax.set(xlabel='α', ylabel='error(α) − (error(0) + error(1)) / 2  (points)', title='error barrier')
  for ax in (error_ax, curve_ax):
    ax.grid(alpha=0.3)
  _legend_outside(curve_ax)  # one legend for both panels: the same colours
  fig.savefig(path, dpi=150)
  return {'test_error': _lines(error_ax), 'curve': _lines(curve_ax)}


PAIR_NAME = re.compile(r'(?P<start>.+)_round(?P<round>-?\d+)_seed(?P<seed>\d+)$')


def pair_kind(curve: dict) -> tuple[str, str, dict] | None:
  """('LMC' or 'SGD noise', the start, the curve oriented so that α = 1 is that start's network) of a stored pair
  (`analyses.pair_curve`); None for a pair of neither kind or without a shared mask."""
  if not curve.get('shared_mask'):
    return None
  a, b = PAIR_NAME.match(curve['a']), PAIR_NAME.match(curve['b'])
  if a['start'] == b['start'] and a['seed'] != b['seed']:
    return 'SGD noise', a['start'], curve
  if a['seed'] == b['seed'] and 'retrain' in (a['start'], b['start']):
    if a['start'] == 'retrain':  # α = 1 at `a`: flip the path so that it runs from the retrained network
      curve = {**curve, 'test_error': curve['test_error'][::-1]}
      a = b
    return 'LMC', a['start'], curve
  return None


def plot_pair_curves(curves: Mapping[str, Sequence[dict]], path: str, title: str = '') -> dict:
  """The paper's LMC figure: test error along the linear path, for each kind of pair. Left: a final network (α = 1)
  and the retrained network of its seed (α = 0); right: two seeds of one start. `curves` maps a method to its stored
  pair curves; lines are means over seeds (pairs), bands their min–max."""
  fig = _figure(figsize=(11, 4.2), layout='constrained')
  axes = dict(zip(('LMC', 'SGD noise'), fig.subplots(1, 2, sharey=True)))
  groups = {}
  for method, method_curves in curves.items():
    for curve in method_curves:
      kind = pair_kind(curve)
      if kind:
        groups.setdefault((kind[0], method, kind[1]), []).append(kind[2])
  for (kind, method, start), members in sorted(groups.items()):
    errors = np.asarray([c['test_error'] for c in members], float)
    alphas = members[0]['alphas']
    linestyle, marker = METHOD_STYLES.get(method, ('-.', '^'))
    line, = axes[kind].plot(alphas, errors.mean(0), color=MODE_COLORS.get(start), linestyle=linestyle,
                            marker=marker, markersize=4,  # dense networks belong to no method
                            label=f'{"" if start == "dense" else method.upper() + " "}{start} (n={len(members)})')
    if len(members) > 1:
      axes[kind].fill_between(alphas, errors.min(0), errors.max(0), color=line.get_color(), alpha=0.15)
  axes['LMC'].set(xlabel='α   (0: retrained network, 1: network trained from the start)', ylabel='test error (%)',
                  title='linear mode connectivity to the retrained network')
  axes['SGD noise'].set(xlabel='α   (0 and 1: two seeds of one start)', title='SGD-noise stability')
  for ax in axes.values():
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(0, -0.18), ncol=2, frameon=False)
  fig.suptitle((title + ': ' if title else '') + 'mean over seeds; bands: min–max over pairs')
  fig.savefig(path, dpi=150)
  return {kind: _lines(ax) for kind, ax in axes.items()}


def load_results(workdir: str) -> tuple[dict, dict]:
  """(results.json, config.json) of a workdir; config.json is {} where absent."""
  path, config_path = RunDir(workdir).results, RunDir(workdir).config
  if not os.path.exists(path):
    raise UserError(f'no results.json in {workdir}: run `python -m aws_jax.main --workdir={workdir} ...` first')
  with open(path) as f:
    results = json.load(f)
  config = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return results, config


def _method(results: dict, config: dict) -> str:
  return config.get('method') or (results['rounds'][0]['method'] if results['rounds'] else 'run')


def _mean_lines(points: Mapping[tuple, list]) -> dict:
  """{key: (x, mean y, std y)} sorted by x, from {key: [(x, y), ...]}; std with ddof 1, NaN for a single y."""
  lines = {}
  for key, pairs in points.items():
    by_x = collections.defaultdict(list)
    for x, y in pairs:
      by_x[round(x, 6)].append(y)
    xs = sorted(by_x, reverse=True)
    stds = [float(np.std(by_x[x], ddof=1)) if len(by_x[x]) > 1 else math.nan for x in xs]
    lines[key] = (xs, [float(np.mean(by_x[x])) for x in xs], stds)
  return lines


def _title(configs: Sequence[dict]) -> str:
  setups = {(c.get('model'), c.get('dataset')) for c in configs}
  if len(setups) == 1 and None not in next(iter(setups)):
    model, dataset = next(iter(setups))
    return f'{model} on {dataset}'
  return ''


def _sparsity_axis(ax, xs) -> None:
  """Log-scale % weights left, decreasing to the right, every plotted level in view, ticks at (at most 9 of) them,
  the sparsest among them."""
  levels = sorted(set(xs), reverse=True)
  ticks = levels[::math.ceil(len(levels) / 8)] if levels else levels
  ticks += [] if not levels or ticks[-1] == levels[-1] else [levels[-1]]
  ax.set_xscale('log')
  ax.set_xticks(ticks, [f'{t:.3g}' for t in ticks])
  ax.minorticks_off()
  if levels:
    ax.set_xlim(max(levels) * 1.15, min(levels) / 1.15)
  ax.set_xlabel('weights left (%)')
  ax.grid(alpha=0.3)


def stage_accuracy(record: dict) -> float:
  """A pruning round's test accuracy with BatchNorm statistics re-estimated at α = 0, where recorded.

  The running statistics AWS gathers under random α mislead at α = 0, so figures use the recalibrated accuracy.
  """
  return record.get('recalibrated_test_accuracy', record['test_accuracy'])


def _dodge(ax, offset_points: float):
  """ax's data coordinates shifted sideways by `offset_points` on the page (the data drawn keep their values)."""
  from matplotlib.transforms import ScaledTranslation  # pylint: disable=import-outside-toplevel
  return ax.transData + ScaledTranslation(offset_points / 72, 0, ax.figure.dpi_scale_trans)


def _legend_outside(ax, **kwargs) -> None:
  """The legend to the right of the axes, where it hides no data."""
  ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize='small', **kwargs)


DODGE_POINTS = 16  # final trainings at one sparsity spread over at most this width on the page, side by side


def plot_accuracy(stage: Mapping[str, list], final: Mapping[tuple, list], path: str, dense: Sequence[float] = (),
                  title: str = '') -> dict:
  """Test accuracy (%) against % weights left: each method's pruning stage, and each (method, start)'s final
  trainings, one line each; seeds at one level are averaged, error bars ± one standard deviation (n > 1). The final
  trainings' lines are drawn side by side (dodged by a few points on the page) so that equal sparsities do not hide
  each other; the data returned are the true sparsities.

  `stage` maps a method to [(% left, accuracy %), ...], `final` maps (method, start) to the same; `dense` holds
  accuracies (%) drawn as the dotted horizontal line (their mean, shaded ± one standard deviation).
  """
  fig = _figure(figsize=(9, 4.5), layout='constrained')
  ax = fig.subplots()
  all_x, all_y = [], list(dense)
  stage_lines = _mean_lines({(method, 'pruning stage'): points for method, points in stage.items()})
  final_lines = _mean_lines(final)
  step = DODGE_POINTS / max(len(final_lines) - 1, 1)
  offsets = {key: (i - (len(final_lines) - 1) / 2) * step for i, key in enumerate(final_lines)}
  for (method, mode), (xs, ys, stds) in {**stage_lines, **final_lines}.items():
    linestyle, marker = METHOD_STYLES.get(method, ('-.', '^'))
    transform = _dodge(ax, offsets.get((method, mode), 0))
    line, = ax.plot(xs, ys, color=MODE_COLORS.get(mode), linestyle=linestyle, marker=marker, markersize=4,
                    label=f'{method.upper()} {mode}', alpha=0.6 if mode == 'pruning stage' else 1.0,
                    transform=transform)
    if not np.all(np.isnan(stds)):
      ax.errorbar(xs, ys, yerr=np.nan_to_num(stds), fmt='none', ecolor=line.get_color(), capsize=3, alpha=0.8,
                  transform=transform)
    all_x += xs
    all_y += [y + sign * s for y, s in zip(ys, np.nan_to_num(stds)) for sign in (-1, 1)]
  if len(dense):
    mean = float(np.mean(dense))
    ax.axhline(mean, color='k', linewidth=0.8, linestyle=':', label='dense')
    if len(dense) > 1:
      spread = float(np.std(dense, ddof=1))
      ax.axhspan(mean - spread, mean + spread, color='k', alpha=0.08, label=f'dense ± 1 std ({len(dense)} runs)')
      all_y += [mean - spread, mean + spread]
  _sparsity_axis(ax, all_x)
  if all_y:  # every bar and band whole (matplotlib's autoscale misjudges the dodged lines)
    margin = 0.08 * max(max(all_y) - min(all_y), 0.5)
    ax.set_ylim(min(all_y) - margin, max(all_y) + margin)
  ax.set(ylabel='test accuracy (%)', title=title)
  _legend_outside(ax, title='mean over seeds;\nbars: ± 1 std (≥ 2 seeds);\nfinal trainings dodged\nsideways at '
                  'each sparsity', title_fontsize='small')
  fig.savefig(path, dpi=150)
  return {'accuracy': _lines(ax)}


def plot_accuracy_vs_sparsity(workdirs: Sequence[str], path: str) -> dict:
  """`plot_accuracy` of run directories: their pruning stages (recalibrated accuracy) and final trainings.

  Final trainings of the same method and start are gathered over workdirs and source rounds. The dense warm-up
  (round 0) is the horizontal line.
  """
  stage_points, final_points, dense, configs = collections.defaultdict(list), collections.defaultdict(list), [], []
  for workdir in workdirs:
    results, config = load_results(workdir)
    configs.append(config)
    method = _method(results, config)
    for r in results['rounds']:
      stage_points[method].append((100 * r['fraction_left'], 100 * stage_accuracy(r)))
      if r['round'] == 0:
        dense.append(100 * stage_accuracy(r))
    for f in results['final']:
      final_points[method, f['mode']].append((100 * f['fraction_left'], 100 * f['test_accuracy']))
  return plot_accuracy(stage_points, final_points, path, dense=dense, title=_title(configs))


def _display(label: str) -> str:
  """A line's label as shown: the method in capitals, after its variant where it has one ('wd5e-3/AWS')."""
  variant, _, method = label.rpartition('/')
  return f'{variant}/{method.upper()}' if variant else method.upper()


def _style(label: str) -> tuple[str, str]:
  return METHOD_STYLES.get(label.rpartition('/')[2], ('-.', '^'))


def _round_points(workdirs: Sequence[str], labels: Sequence[str] | None, value) -> tuple[dict, list]:
  """({label: [(% left, value(record)), ...]}, configs) over every round that has a value; a workdir's label is its
  method unless `labels` gives one per workdir."""
  points, configs = collections.defaultdict(list), []
  for index, workdir in enumerate(workdirs):
    results, config = load_results(workdir)
    configs.append(config)
    label = labels[index] if labels else _method(results, config)
    for r in results['rounds']:
      if value(r) is not None:
        points[label].append((100 * r['fraction_left'], value(r)))
  return points, configs


def _plot_over_rounds(points: Mapping[str, list], configs: Sequence[dict], path: str, ylabel: str) -> dict:
  """One line per label (its runs' mean at each sparsity), shaded ± one standard deviation where there are several."""
  fig = _figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.subplots()
  all_x, spread = [], {}
  for label, (xs, ys, stds) in _mean_lines(points).items():
    linestyle, marker = _style(label)
    line, = ax.plot(xs, ys, linestyle=linestyle, marker=marker, label=_display(label))
    if not np.all(np.isnan(stds)):
      low, high = (np.array(ys) + sign * np.nan_to_num(stds) for sign in (-1, 1))
      ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, label=f'{_display(label)} ± 1 std over runs')
      spread[_display(label)] = stds
    all_x += xs
  _sparsity_axis(ax, all_x)
  ax.set(ylabel=ylabel, title=_title(configs))
  _legend_outside(ax)
  fig.savefig(path, dpi=150)
  return {'lines': _lines(ax), 'spread': spread}


def plot_psi_reset_barriers(workdirs: Sequence[str], path: str, labels: Sequence[str] | None = None) -> dict:
  """The error barrier between each pruning round's solution and its ψ-reset counterpart, one line per method (or
  per `labels`, one per workdir): the mean over its runs (pruning seeds), shaded ± one standard deviation."""
  points, configs = _round_points(workdirs, labels, lambda r: r.get('psi_reset_barrier'))
  if not points:
    raise UserError(f'no ψ-reset barriers in {", ".join(workdirs)}: the pruning stage records them with '
                    f'psi_reset_barrier in --config.analyses')
  drawn = _plot_over_rounds(points, configs, path, 'error barrier to the ψ-reset network (points)')
  return {'barrier': drawn['lines'], 'spread': drawn['spread']}


def plot_psi(workdirs: Sequence[str], path: str, labels: Sequence[str] | None = None) -> dict:
  """Where ψ went over the pruning stage: the median normalization layer's mean γ after every round (γ starts at 1;
  the forward pass under AWS sees the trained γ only at α = 0), one line per method (or `labels`)."""
  points, configs = _round_points(workdirs, labels, lambda r: r.get('psi_gamma_median'))
  if not points:
    raise UserError(f'no ψ statistics in {", ".join(workdirs)}: the pruning stage records them with psi in '
                    f'--config.analyses')
  drawn = _plot_over_rounds(points, configs, path, 'median over layers of mean γ')
  return {'gamma': drawn['lines'], 'spread': drawn['spread']}


SIGN_KEYS = {'signs_changed_from_init': 'since initialisation',
             'signs_changed_from_previous': 'since the previous round'}  # round records' keys: their titles


def plot_sign_changes(workdirs: Sequence[str], path: str, labels: Sequence[str] | None = None) -> dict:
  """Sign analytics of the pruning stage: % of the alive prunable weights whose sign differs from their initial
  value (left) and from the previous round's (right), after every round, one line per method."""
  points = {key: _round_points(workdirs, labels, lambda r, key=key: None if key not in r else 100 * r[key])[0]
            for key in SIGN_KEYS}
  configs = [load_results(workdir)[1] for workdir in workdirs]
  if not any(points.values()):
    raise UserError(f'no sign changes in {", ".join(workdirs)}: their pruning stages did not record '
                    f'{" or ".join(SIGN_KEYS)}')
  fig = _figure(figsize=(10, 4), layout='constrained')
  axes = dict(zip(SIGN_KEYS, fig.subplots(1, 2)))
  for key, ax in axes.items():
    all_x = []
    for label, (xs, ys, _) in _mean_lines(points[key]).items():
      linestyle, marker = _style(label)
      ax.plot(xs, ys, linestyle=linestyle, marker=marker, label=_display(label))
      all_x += xs
    _sparsity_axis(ax, all_x)
    ax.set(ylabel='signs changed (% of alive weights)', title=SIGN_KEYS[key])
  _legend_outside(axes['signs_changed_from_previous'])  # one legend for both panels: the same lines
  fig.suptitle(_title(configs))
  fig.savefig(path, dpi=150)
  return {key: _lines(ax) for key, ax in axes.items()}


def plot_comparison(accuracies: Mapping[str, tuple], differences: Mapping[str, tuple], path: str,
                    title: str = '', confidence: float = 0.95, pruning_runs: bool = False) -> dict:
  """The final comparison as points with their intervals: test accuracy (%) of each group (left) and the paired
  differences in points (right; left out where there are none: a grid with no pair to compare). Each maps a label to
  (value, interval half-width); NaN: no interval. `pruning_runs`: the intervals are over pruning runs' means (a study
  with several), not over seeds. The axes take every interval whole (none is clipped at 100 %); returns
  {'accuracy': {label: (value, half-width)}, 'difference': ...}, as drawn (a panel left out: no key)."""
  rows = max(len(accuracies), len(differences))
  fig = _figure(figsize=(12 if differences else 8, max(3.0, 0.35 * rows + 1.8)), layout='constrained')
  accuracy_ax, difference_ax = fig.subplots(1, 2) if differences else (fig.subplots(), None)
  drawn = {}
  panels = (('accuracy', accuracy_ax, accuracies, 'C0'), ('difference', difference_ax, differences, 'C3'))
  for name, ax, data, color in panels[:2 if differences else 1]:
    labels = list(data)[::-1]  # the first on top
    values = np.array([data[label][0] for label in labels], float)
    half_widths = np.array([data[label][1] for label in labels], float)
    ax.errorbar(values, range(len(labels)), xerr=np.nan_to_num(half_widths), fmt='o', color=color, capsize=4,
                markersize=5)
    ax.set_yticks(range(len(labels)), labels, fontsize='small')
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.grid(axis='x', alpha=0.3)
    ends = np.concatenate([values - np.nan_to_num(half_widths), values + np.nan_to_num(half_widths)])
    if len(ends):
      low, high = float(np.min(ends)), float(np.max(ends))
      if ax is difference_ax:  # the zero line in view
        low, high = min(low, 0.0), max(high, 0.0)
      margin = 0.08 * max(high - low, 1.0)
      ax.set_xlim(low - margin, high + margin)
    drawn[name] = {label: (float(v), float(h)) for label, v, h in zip(labels[::-1], values[::-1], half_widths[::-1])}
  accuracy_ax.set(xlabel='test accuracy (%)', title='final trainings')
  paired, unit = ('seed and pruning run', 'pruning runs\' means') if pruning_runs else ('seed', 'seeds')
  if difference_ax is not None:
    difference_ax.axvline(0, color='k', linewidth=0.8)
    difference_ax.set(xlabel=f'difference (points), paired by {paired}', title='differences')
  fig.suptitle(f'{title + chr(10) if title else ""}points: mean over seeds; bars: {100 * confidence:.0f} % t-interval '
               f'over {unit} (none: one value)')
  fig.savefig(path, dpi=150)
  return drawn


def write_figures(workdirs: Sequence[str], barrier_files: Sequence[str], out: str, signs: bool = False) -> list[str]:
  """Every figure the inputs allow, in `out`; returns their paths. signs.png only when asked (the command line
  does), where the rounds recorded sign changes."""
  os.makedirs(out, exist_ok=True)
  written = []
  if workdirs:
    written.append(os.path.join(out, 'accuracy_vs_sparsity.png'))
    plot_accuracy_vs_sparsity(workdirs, written[-1])
    if any('psi_reset_barrier' in r for w in workdirs for r in load_results(w)[0]['rounds']):
      written.append(os.path.join(out, 'psi_reset_barrier.png'))
      plot_psi_reset_barriers(workdirs, written[-1])
    if signs and any(key in r for w in workdirs for r in load_results(w)[0]['rounds'] for key in SIGN_KEYS):
      written.append(os.path.join(out, 'signs.png'))
      plot_sign_changes(workdirs, written[-1])
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
    with cli.holding(values.workdirs or [], 'plots'):
      for path in write_figures(values.workdirs or [], values.barriers or [], values.out, signs=True):
        print(path)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  # Defined here, not at import: aws_jax.barrier imports this module.
  cli.define_path_list('workdirs', 'Run directories holding results.json (AWS and LRR runs, several sparsities).')
  cli.define_path_list('barriers', 'Barrier JSON files of `python -m aws_jax.barrier`, overlaid in barriers.png.')
  cli.define_path('out', 'figures', 'Directory the PNG files are written to.')
  app.run(main, flags_parser=cli.parse_flags)
