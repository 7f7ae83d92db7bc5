"""A study's rows and its files: study.csv (a row per trained network) and study.md (the paper's table, the grid's
means, the paired differences, each pruning stage round by round, the time account). The columns an analysis adds
are the ones it declares (`analyses.Analysis.fields`)."""
import csv
import math
import re
from typing import Mapping, Sequence

import ml_collections

from aws_jax import analyses, timing
from aws_jax import config as config_lib
from aws_jax.study.grid import DENSE, plan
from aws_jax.study.stats import CONFIDENCE

PAPER_STARTS = ('signed', 'signed_keep_norm', 'mask', 'retrain', 'dense')  # the paper's table, where trained
HEAD = ('method', 'start', 'source_round', 'fraction_left', 'pruning_seed', 'seed', 'test_accuracy', 'test_loss',
        'train_accuracy')
TAIL = ('epochs', 'wall_s')


def csv_fields(variants: bool = False) -> tuple[str, ...]:
  """study.csv's columns: the network, its accuracy, each final analysis's declared fields, its epochs and seconds
  (with a `variant` column first where the study has variants)."""
  declared = tuple(f.name for a in analyses.ANALYSES.values() if a.of == 'final' for f in a.fields)
  return ('variant',) * variants + HEAD + declared + TAIL


def rows_of(config: ml_collections.ConfigDict, method: str, results: dict, pruning_seed: int | None = None,
            dense: bool = True, variant: str | None = None) -> list[dict]:
  """The CSV rows of `method`'s run directory (of `pruning_seed`, default `config.seed`) that belong to the grid
  (its results.json may hold more)."""
  seeds, rounds = set(config.study.seeds), dict(plan(config, dense)[method])
  rows = []
  for f in results['final']:
    if f['seed'] in seeds and f['mode'] in rounds.get(f['source_round'], ()):
      is_dense = f['mode'] == DENSE
      row = {'method': DENSE if is_dense else method, 'start': f['mode'],
             'source_round': None if is_dense else f['source_round'],
             'pruning_seed': config.seed if pruning_seed is None else pruning_seed,
             **{k: f.get(k) for k in csv_fields()[3:] if k != 'pruning_seed'}}
      rows.append(row if variant is None else {'variant': variant, **row})
  return rows


def sort_rows(rows: Sequence[dict], methods: Sequence[str], starts: Sequence[str],
              variants: Sequence[str | None] = (None,)) -> list[dict]:
  """Rows in grid order: variants, methods as given, then dense; starts as given; source round; pruning seed; seed."""
  order = [*methods, DENSE]
  starts = list(starts) + [s for s in config_lib.MODES if s not in starts]  # retrain where the LMC barrier adds it
  return sorted(rows, key=lambda r: (list(variants).index(r.get('variant')), order.index(r['method']),
                                     starts.index(r['start']), r['source_round'] or 0, r.get('pruning_seed') or 0,
                                     r['seed']))


def write_csv(rows: Sequence[dict], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=csv_fields(any('variant' in r for r in rows)))
    writer.writeheader()
    writer.writerows(rows)


def time_account(results: dict) -> dict:
  """{category: seconds} summed over a run directory's rounds and final trainings."""
  merged = timing.merged(*results['rounds'], *results['final'])
  return {key[5:-2]: value for key, value in merged.items() if timing.is_time_field(key)}


def _percent(value: float) -> str:
  return 'n/a' if value is None or math.isnan(value) else f'{100 * value:.2f}'


def _round_name(source_round: int | None) -> str:
  return '—' if source_round is None else str(source_round)


def _points(value: float) -> str:
  return 'n/a' if value is None or math.isnan(value) else f'{value:.2f}'


def method_of(run: str) -> str:
  """The method of a pruning run's name: 'aws' of 'aws', of 'aws_seed5' and of 'variant/aws'."""
  return re.sub(r'_seed\d+$', '', run.rsplit('/', 1)[-1])


def variant_of(run: str) -> str | None:
  """The variant of a pruning run's name ('variant/aws'), None without variants."""
  return run.rsplit('/', 1)[0] if '/' in run else None


def source_barrier(rounds: Mapping[str, list], method: str, source_round: int | None,
                   variant: str | None = None) -> float | None:
  """The ψ-reset barrier of `method`'s source round, averaged over its pruning runs; None where none recorded it."""
  barriers = [r['psi_reset_barrier'] for run, records in rounds.items()
              if method_of(run) == method and variant_of(run) == variant
              for r in records if r['round'] == source_round and 'psi_reset_barrier' in r]
  return sum(barriers) / len(barriers) if barriers else None


def paper_table(summaries: Sequence[dict], rounds: Mapping[str, list]) -> list[str]:
  """The paper's table: per method × start (PAPER_STARTS, where trained), the accuracy with its interval, the LMC and
  SGD-noise barriers, and the ψ-reset barrier of the source round (means over pruning runs where there are several;
  `rounds` maps each pruning run's name to its round records)."""
  lines = ['## The paper\'s table: accuracy (%), barriers (points of test error)', '',
           f'| method | start | source round | accuracy ± {100 * CONFIDENCE:.0f} % | LMC barrier to retrain | '
           'SGD-noise barrier | source ψ-reset barrier | n |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  order = {start: i for i, start in enumerate(PAPER_STARTS)}
  chosen = [s for s in summaries if s['start'] in order]
  for s in sorted(chosen, key=lambda s: (s['method'] == DENSE, s['method'], s['source_round'] or 0,
                                         order[s['start']])):
    barrier = source_barrier(rounds, s['method'], s['source_round'], s.get('variant'))
    lines.append(f'| {s["method"]} | {s["start"]} | {_round_name(s["source_round"])} | {_percent(s["mean"])} ± '
                 f'{_percent(s["half_width"])} | {_points(s["lmc_barrier"])} | {_points(s["sgd_noise_barrier"])} | '
                 f'{_points(barrier)} | {s["n"]} |')
  return lines + ['']


def means_table(summaries: Sequence[dict]) -> list[str]:
  lines = ['## Final trainings: test accuracy (%) over seeds', '',
           '| method | start | source round | % left | mean | std | n |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
  for s in summaries:
    lines.append(f'| {s["method"]} | {s["start"]} | {_round_name(s["source_round"])} | '
                 f'{100 * s["fraction_left"]:.2f} | {_percent(s["mean"])} | {_percent(s["std"])} | {s["n"]} |')
  return lines


def differences_table(differences: Sequence[dict], title: str, several_runs: bool) -> list[str]:
  """Paired differences with their intervals: accuracies in points of accuracy, barriers in points of error."""
  unit = 'over pruning runs (each run\'s mean; n: runs)' if several_runs else 'over seeds'
  lines = ['', f'## {title}, paired by seed{" and pruning run" if several_runs else ""}, '
           f'{100 * CONFIDENCE:.0f} % t-interval {unit}', '',
           '| difference | of | source round | mean | ± half-width | interval | n |',
           '| --- | --- | ---: | ---: | ---: | --- | ---: |']
  for d in differences:
    show = _percent if d.get('field', 'test_accuracy') == 'test_accuracy' else _points
    what = {'test_accuracy': 'accuracy (points)'}.get(d.get('field', 'test_accuracy'),
                                                      f'{d.get("field", "")} (points of error)')
    bounds = ('n/a' if math.isnan(d['half_width']) else
              f'[{show(d["mean"] - d["half_width"])}, {show(d["mean"] + d["half_width"])}]')
    lines.append(f'| {d["label"]} | {what} | {_round_name(d["source_round"])} | {show(d["mean"])} | '
                 f'{show(d["half_width"])} | {bounds} | {d["n"]} |')
  if not differences:
    lines.append('| (none: the grid lacks both sides of every comparison) | | | | | | |')
  return lines


def round_fields(records: Sequence[dict]) -> list[analyses.Field]:
  """The round analyses' declared fields that any of `records` holds, in registry order."""
  return [f for a in analyses.ANALYSES.values() if a.of == 'round' for f in a.fields
          if any(f.of(r) is not None for r in records)]


def rounds_table(run: str, records: Sequence[dict], fields: Sequence[analyses.Field]) -> list[str]:
  """A pruning run round by round: weights left, test accuracy, and `fields` (`round_fields`)."""
  lines = ['', f'## Pruning stage: {run}', '', '| round | % left | test acc | ' +
           ' | '.join(f.label for f in fields) + ' |', '| ---: |' + ' ---: |' * (2 + len(fields))]
  for r in records:
    lines.append(f'| {r["round"]} | {100 * r["fraction_left"]:.2f} | {_percent(r["test_accuracy"])} | ' +
                 ' | '.join(f.show(r) for f in fields) + ' |')
  return lines


def time_table(times: Mapping[str, dict]) -> list[str]:
  """Where each pruning run's seconds went (its pruning stage and final trainings), per time_*_s category."""
  lines = ['', '## Time account (seconds)', '', '| run | ' + ' | '.join(timing.CATEGORIES) + ' | total |',
           '| --- |' + ' ---: |' * (len(timing.CATEGORIES) + 1)]
  for run, seconds in times.items():
    lines.append(f'| {run} | ' + ' | '.join(f'{seconds.get(c, 0.0):.1f}' for c in timing.CATEGORIES) +
                 f' | {sum(seconds.values()):.1f} |')
  return lines


def markdown(summaries: Sequence[dict], differences: Sequence[dict], rounds: Mapping[str, list],
             times: Mapping[str, dict] | None = None, between: Sequence[dict] = (),
             overrides: Mapping[str, dict] | None = None) -> str:
  """study.md: per variant (one section without variants) the paper's table, the grid's means and the paired
  differences; the differences between variants; each pruning run round by round; where the time went."""
  names = list(dict.fromkeys(s.get('variant') for s in summaries)) or [None]
  several_runs = any(s.get('runs', 1) > 1 for s in summaries)
  lines = []
  for name in names:
    if name is not None:
      lines += [f'# Variant {name}: {overrides.get(name) or "the config as given"}' if overrides else
                f'# Variant {name}', '']
    own = [s for s in summaries if s.get('variant') == name]
    lines += paper_table(own, rounds) + means_table(own)
    lines += differences_table([d for d in differences if d.get('variant') == name], 'Differences', several_runs)
    lines.append('')
  if between:
    lines += differences_table(between, 'Differences between variants (points of test accuracy)', several_runs)
  fields = round_fields([r for records in rounds.values() for r in records])
  for run, records in rounds.items():
    lines += rounds_table(run, records, fields)
  if times:
    lines += time_table(times)
  return '\n'.join(lines).rstrip('\n') + '\n'
