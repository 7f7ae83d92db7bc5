"""A study's statistics, light (no JAX): summaries per grid cell and paired differences with t-intervals, where the
pruning run is the unit wherever there are several (its final trainings share one mask)."""
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from aws_jax.study.grid import DENSE

BARRIERS = ('lmc_barrier', 'sgd_noise_barrier')  # points of test error; empty where a start has none (docs/method.md)
CONFIDENCE = 0.95

Key = tuple[int | None, int]  # (pruning seed, seed): one trained network of a grid cell


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
  """(mean, half-width) of the two-sided Student-t interval of the mean of `values` (n − 1 degrees of freedom).

  The half-width is NaN for fewer than two values.
  """
  values = np.asarray(values, float)
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, math.nan
  sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
  return mean, float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem


def run_means(values: Mapping[Key, float]) -> list[float]:
  """{(pruning seed, seed): value} → each pruning run's mean value, in pruning-seed order."""
  runs = {}
  for (pruning_seed, _), value in values.items():
    runs.setdefault(pruning_seed, []).append(value)
  return [float(np.mean(runs[p])) for p in sorted(runs)]


def interval(values: Mapping[Key, float]) -> tuple[float, float, int]:
  """(mean, half-width, n) of `values` keyed by (pruning seed, seed): over the seeds where one pruning run holds
  them all, else over the pruning runs' means (the runs are the independent units)."""
  means = run_means(values)
  units = [values[k] for k in sorted(values)] if len(means) == 1 else means
  return (*t_interval(units), len(units))


def group_key(row: dict) -> tuple:
  """A row's grid cell: (variant, method, start, source round)."""
  return row.get('variant'), row['method'], row['start'], row['source_round']


def group_summaries(rows: Sequence[dict]) -> list[dict]:
  """Per (variant, method, start, source round), in row order: fraction left, n (networks), runs (pruning runs), and
  of the test accuracy the mean, the std over networks (ddof 1) and the half-width of the mean's t-interval
  (`interval`: over pruning runs where there are several; NaN for one value); the barriers' means."""
  groups = {}
  for r in rows:
    groups.setdefault(group_key(r), []).append(r)
  summaries = []
  for (variant, method, start, source_round), members in groups.items():
    accuracies = [r['test_accuracy'] for r in members]
    barriers = {k: [r[k] for r in members if r.get(k) is not None] for k in BARRIERS}
    summaries.append({'variant': variant, 'method': method, 'start': start, 'source_round': source_round,
                      'fraction_left': members[0]['fraction_left'], 'n': len(members),
                      'runs': len({r.get('pruning_seed') for r in members}),
                      'mean': float(np.mean(accuracies)),
                      'std': float(np.std(accuracies, ddof=1)) if len(members) > 1 else math.nan,
                      'half_width': interval(cell(members, method, start, source_round, variant=variant))[1],
                      **{k: float(np.mean(v)) if v else math.nan for k, v in barriers.items()}})
  return summaries


def cell(rows: Sequence[dict], method: str, start: str, source_round: int | None, field: str = 'test_accuracy',
         variant: str | None = None) -> dict[Key, float]:
  """{(pruning seed, seed): field} of one grid cell (of `variant`), where recorded."""
  return {(r.get('pruning_seed'), r['seed']): r[field] for r in rows
          if group_key(r) == (variant, method, start, source_round) and r.get(field) is not None}


def paired_differences(a: Mapping[Key, float], b: Mapping[Key, float]) -> dict[Key, float]:
  """a − b per (pruning seed, seed) both have, in key order: the same seed is the same fresh initialisation. A dense
  `b` (one pruning run's, which none changes) pairs with every run of `a` by seed."""
  if len({p for p, _ in b}) == 1 and len({p for p, _ in a}) > 1:
    by_seed = {s: v for (_, s), v in b.items()}
    b = {(p, s): by_seed[s] for p, s in a if s in by_seed}
  return {k: a[k] - b[k] for k in sorted(set(a) & set(b))}


def _difference(label: str, source_round, differences: Mapping[Key, float], **extra) -> dict:
  mean, half_width, n = interval(differences)
  return {'label': label, 'source_round': source_round, 'n': n, 'mean': mean, 'half_width': half_width, **extra}


def comparisons(rows: Sequence[dict], methods: Sequence[str], variant: str | None = None) -> list[dict]:
  """The differences the claims rest on, within one variant, paired by (pruning seed and) seed, per source round,
  where both sides were trained: AWS signed − dense, AWS signed − LRR signed, LRR signed_keep_norm − LRR signed,
  and for each method signed − mask and signed − random_signs; in accuracy, and in the LMC and SGD-noise barriers
  where both sides have them.

  Each: {'label', 'source_round', 'n', 'mean', 'half_width', 'field', 'variant'} in fractions of accuracy (barriers:
  points) (`interval`: n seeds, or n pruning runs where there are several); half-width NaN for n < 2.
  """
  rounds = sorted({r['source_round'] for r in rows if r['source_round'] is not None and r.get('variant') == variant})
  pairs = []
  for k in rounds:
    pairs.append(('AWS signed − dense', k, ('aws', 'signed', k), (DENSE, DENSE, None)))
    pairs.append(('AWS signed − LRR signed', k, ('aws', 'signed', k), ('lrr', 'signed', k)))
    pairs.append(('LRR signed_keep_norm − LRR signed', k, ('lrr', 'signed_keep_norm', k), ('lrr', 'signed', k)))
    for method in methods:
      for other in ('mask', 'random_signs'):
        pairs.append((f'{method.upper()} signed − {method.upper()} {other}', k, (method, 'signed', k),
                      (method, other, k)))
  found = []
  for field in ('test_accuracy', *BARRIERS):
    for label, k, a, b in pairs:
      differences = paired_differences(cell(rows, *a, field=field, variant=variant),
                                       cell(rows, *b, field=field, variant=variant))
      if differences:
        found.append(_difference(label, k, differences, field=field, variant=variant))
  return found


def variant_comparisons(rows: Sequence[dict], names: Sequence[str]) -> list[dict]:
  """Each variant against the first (`names[0]`), per (method, start, source round) trained in both: the test
  accuracy's difference paired by pruning run and seed (the same seeds are the same initialisations and data orders
  in every variant), with its interval as `comparisons` gives."""
  if len(names) < 2:
    return []
  base, found = names[0], []
  cells = list(dict.fromkeys(group_key(r)[1:] for r in rows if r.get('variant') == base))
  for other in names[1:]:
    for method, start, source_round in cells:
      differences = paired_differences(cell(rows, method, start, source_round, variant=other),
                                       cell(rows, method, start, source_round, variant=base))
      if differences:
        label = f'{method.upper()} {start}: {other} − {base}' if method != DENSE else f'dense: {other} − {base}'
        found.append(_difference(label, source_round, differences, field='test_accuracy', variant=other))
  return found
