"""Figures that compare networks: error barriers along linear paths, the LMC and SGD-noise pairs of a study, and the
final comparison of starts with its intervals."""
import re
from typing import Mapping, Sequence

import numpy as np

from aws_jax.plots.common import METHOD_STYLES, MODE_COLORS, _figure, _legend_outside, _lines


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
