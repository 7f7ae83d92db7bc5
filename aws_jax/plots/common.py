"""What the figures share: the Agg figure, line and method styles, the sparsity axis, means over seeds, and the
results of run directories (`load_results`), drawn per pruning round (`_plot_over_rounds`)."""
import collections
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from aws_jax import starts
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


def _legend_outside(ax, **kwargs) -> None:
  """The legend to the right of the axes, where it hides no data."""
  ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize='small', **kwargs)


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
