"""Figures of pruning stages, round by round: test accuracy against sparsity (with the final trainings), the
ψ-reset barrier, ψ, and the signs changed."""
import collections
from typing import Mapping, Sequence

import numpy as np

from aws_jax.errors import UserError
from aws_jax.plots.common import (METHOD_STYLES, MODE_COLORS, _display, _figure, _legend_outside, _lines, _mean_lines,
                                  _method, _plot_over_rounds, _round_points, _sparsity_axis, _style, _title,
                                  load_results)


def stage_accuracy(record: dict) -> float:
  """A pruning round's test accuracy with BatchNorm statistics re-estimated at α = 0, where recorded.

  The running statistics AWS gathers under random α mislead at α = 0, so figures use the recalibrated accuracy.
  """
  return record.get('recalibrated_test_accuracy', record['test_accuracy'])


def _dodge(ax, offset_points: float):
  """ax's data coordinates shifted sideways by `offset_points` on the page (the data drawn keep their values)."""
  from matplotlib.transforms import ScaledTranslation  # pylint: disable=import-outside-toplevel
  return ax.transData + ScaledTranslation(offset_points / 72, 0, ax.figure.dpi_scale_trans)


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
