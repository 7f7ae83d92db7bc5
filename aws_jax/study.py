"""A study: the paper's comparisons as one grid of runs, with statistics over seeds.

Command:
  python -m aws_jax.study --config=configs/digits.py:study --workdir=runs/digits_study [--config.KEY=VALUE ...]

`config.study` is the grid: methods × starts × source rounds (−1: the last) × seeds, and optionally × pruning seeds.
Each method's pruning stage runs once, as an ordinary run directory WORKDIR/<method>/ (`protocol.run` with
`config.method` set to it), and its final trainings are `final.modes` = the starts and `final.seeds` = the seeds,
once per source round. The `dense` start depends on neither the method nor the round: it is trained once per seed,
in the first method's directory from its last round, and reported as method `dense`.

`study.pruning_seeds` = (p, q, …) runs each method's pruning stage once per pruning seed (`config.seed` = p: its
initialisation, data order and α draws), in WORKDIR/<method>/ for `config.seed` itself and WORKDIR/<method>_seed<p>/
for the others, each with the same final seeds. The final trainings of one pruning run share its mask, so the
pruning run is the unit of a claim: with several, each interval is over the pruning runs' means (a difference's n:
pruning runs), differences are paired by pruning run and seed, and the dense start (which no pruning run changes) is
trained once (with the first pruning seed's runs) and paired by seed. `--parallel` runs each pruning seed's part in a
process of its own, all at once (`run_at_once`; for a GPU), then writes the combined tables.

Everything is checkpointed: rerunning resumes, and widening the grid (a seed, a start, a round, a method, a pruning
seed) trains only the new entries. WORKDIR then holds:

  study.csv                  one row per trained network (CSV_FIELDS)
  study.md                   mean ± std over seeds per (method, start, source round); the paired differences the
                             paper's claims rest on, with 95 % t-intervals over seeds; each method's pruning stage
  accuracy_vs_sparsity.png   test accuracy against weights left, every method × start, and the pruning stages
  psi_reset_barrier.png      the ψ-reset barrier after every pruning round, per method (when measured)
  starts.png                 the final comparison: accuracies and differences as bars with 95 % intervals
  signs.png                  signs changed since initialisation and since the previous round (when recorded)

Accuracies in study.md and the figures are percentages; differences are in points. A pruning round's accuracy is
the one with BatchNorm statistics re-estimated at α = 0 (`recalibrated_test_accuracy`), where recorded.
"""
import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Mapping, Sequence

import ml_collections
import numpy as np
from absl import app, flags

from aws_jax import cli
from aws_jax import config as config_lib
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError
from aws_jax.rundir import Lock, RunDir

CSV_FIELDS = ('method', 'start', 'source_round', 'fraction_left', 'pruning_seed', 'seed', 'test_accuracy', 'test_loss',
              'train_accuracy', 'lmc_barrier', 'sgd_noise_barrier', 'epochs', 'wall_s')
BARRIERS = ('lmc_barrier', 'sgd_noise_barrier')  # points of test error; empty where a start has none (docs/method.md)
PAPER_STARTS = ('signed', 'signed_keep_norm', 'mask', 'retrain', 'dense')  # the paper's table, where trained
DENSE = 'dense'
CONFIDENCE = 0.95
FIGURES = ('accuracy_vs_sparsity.png', 'psi_reset_barrier.png', 'starts.png', 'signs.png', 'lmc.png')


def pruning_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The pruning runs' seeds: `study.pruning_seeds`, or `config.seed` alone."""
  return tuple(config.study.pruning_seeds) or (config.seed,)


def run_name(config: ml_collections.ConfigDict, method: str, pruning_seed: int) -> str:
  """The run directory's name (under the study's workdir) of `method`'s pruning run with `pruning_seed`."""
  return method if pruning_seed == config.seed else f'{method}_seed{pruning_seed}'


def method_config(config: ml_collections.ConfigDict, method: str,
                  pruning_seed: int | None = None) -> ml_collections.ConfigDict:
  """`config` for one method's run directory: that method (and pruning seed), the study's seeds as final seeds."""
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.method = method
  derived.seed = config.seed if pruning_seed is None else pruning_seed
  derived.final.seeds = tuple(config.study.seeds)
  derived.final.source_round = -1
  return derived


def source_rounds(config: ml_collections.ConfigDict, method: str) -> list[int]:
  """The study's source rounds of `method`, −1 resolved to its last round, sorted, without repeats."""
  last = config_lib.last_round(config, method)
  return sorted({last if r == -1 else r for r in config.study.source_rounds})


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad value of the config or its grid; creates and runs nothing."""
  config_lib.validate(config)
  study = config.study
  for key in ('methods', 'starts', 'source_rounds', 'seeds', 'pruning_seeds'):
    if not study[key] and key != 'pruning_seeds':  # () there: one pruning run, with config.seed
      raise UserError(f'--config.study.{key} is empty; give at least one')
    if key != 'source_rounds' and len(set(study[key])) < len(study[key]):
      raise UserError(f'--config.study.{key}={tuple(study[key])} names one twice; give each once')
  for start in study.starts:
    if start not in config_lib.MODES:
      raise UserError(f'--config.study.starts has {start!r}; each must be one of {", ".join(config_lib.MODES)}')
  for method in study.methods:
    try:
      config_lib.validate(method_config(config, method))
    except UserError as e:
      raise UserError(f'--config.study.methods has {method!r}: {e}') from None
    last = config_lib.last_round(config, method)
    for r in study.source_rounds:
      if not -1 <= r <= last:
        raise UserError(f'--config.study.source_rounds has {r}, never reached by {method}: its pruning stage runs '
                        f'rounds 0..{last} (-1 means the last)')


def plan(config: ml_collections.ConfigDict, dense: bool = True) -> dict[str, list[tuple[int, tuple[str, ...]]]]:
  """{method: [(source round, final.modes trained from it), ...]}: the grid as final-stage invocations of one
  pruning seed.

  `dense` goes to the first method only, from its last round, so widening the grid never moves it; and only to the
  first pruning seed's runs (`dense`=False for the others): no pruning run changes it.
  """
  starts = tuple(s for s in config.study.starts if s != DENSE)
  if config.barrier.lmc and 'retrain' not in starts:
    starts += ('retrain',)  # the reference of the LMC barrier
  runs = {}
  for index, method in enumerate(config.study.methods):
    rounds = {r: starts for r in source_rounds(config, method)}
    if dense and index == 0 and DENSE in config.study.starts:
      last = config_lib.last_round(config, method)
      rounds[last] = rounds.get(last, ()) + (DENSE,)
    runs[method] = sorted(rounds.items())
  return runs


def rows_of(config: ml_collections.ConfigDict, method: str, results: dict, pruning_seed: int | None = None,
            dense: bool = True) -> list[dict]:
  """The CSV rows of `method`'s run directory (of `pruning_seed`, default `config.seed`) that belong to the grid
  (its results.json may hold more)."""
  seeds, rounds = set(config.study.seeds), dict(plan(config, dense)[method])
  rows = []
  for f in results['final']:
    if f['seed'] in seeds and f['mode'] in rounds.get(f['source_round'], ()):
      is_dense = f['mode'] == DENSE
      rows.append({'method': DENSE if is_dense else method, 'start': f['mode'],
                   'source_round': None if is_dense else f['source_round'],
                   'pruning_seed': config.seed if pruning_seed is None else pruning_seed,
                   **{k: f.get(k) for k in CSV_FIELDS[3:] if k != 'pruning_seed'}})
  return rows


def sort_rows(rows: Sequence[dict], methods: Sequence[str], starts: Sequence[str]) -> list[dict]:
  """Rows in grid order: methods as given, then dense; starts as given; source round; pruning seed; seed."""
  order = [*methods, DENSE]
  starts = list(starts) + [s for s in config_lib.MODES if s not in starts]  # retrain where the LMC barrier adds it
  return sorted(rows, key=lambda r: (order.index(r['method']), starts.index(r['start']),
                                     r['source_round'] or 0, r.get('pruning_seed') or 0, r['seed']))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
  """(mean, half-width) of the two-sided Student-t interval of the mean of `values` (n − 1 degrees of freedom).

  The half-width is NaN for fewer than two values.
  """
  from scipy import stats  # pylint: disable=import-outside-toplevel  # slow to import; only the statistics need it
  values = np.asarray(values, float)
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, math.nan
  sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
  return mean, float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem


def run_means(values: Mapping[tuple[int, int], float]) -> list[float]:
  """{(pruning seed, seed): value} → each pruning run's mean value, in pruning-seed order."""
  runs = {}
  for (pruning_seed, _), value in values.items():
    runs.setdefault(pruning_seed, []).append(value)
  return [float(np.mean(runs[p])) for p in sorted(runs)]


def interval(values: Mapping[tuple[int, int], float]) -> tuple[float, float, int]:
  """(mean, half-width, n) of `values` keyed by (pruning seed, seed): over the seeds where one pruning run holds
  them all, else over the pruning runs' means (the runs are the independent units)."""
  means = run_means(values)
  units = [values[k] for k in sorted(values)] if len(means) == 1 else means
  return (*t_interval(units), len(units))


def group_summaries(rows: Sequence[dict]) -> list[dict]:
  """Per (method, start, source round), in row order: fraction left, n (networks), runs (pruning runs), and of the
  test accuracy the mean, the std over networks (ddof 1) and the half-width of the mean's t-interval (`interval`:
  over pruning runs where there are several; NaN for one value)."""
  groups = {}
  for r in rows:
    groups.setdefault((r['method'], r['start'], r['source_round']), []).append(r)
  summaries = []
  for (method, start, source_round), members in groups.items():
    accuracies = [r['test_accuracy'] for r in members]
    barriers = {k: [r[k] for r in members if r.get(k) is not None] for k in BARRIERS}
    summaries.append({'method': method, 'start': start, 'source_round': source_round,
                      'fraction_left': members[0]['fraction_left'], 'n': len(members),
                      'runs': len({r.get('pruning_seed') for r in members}),
                      'mean': float(np.mean(accuracies)),
                      'std': float(np.std(accuracies, ddof=1)) if len(members) > 1 else math.nan,
                      'half_width': interval(cell(members, method, start, source_round))[1],
                      **{k: float(np.mean(v)) if v else math.nan for k, v in barriers.items()}})
  return summaries


def cell(rows: Sequence[dict], method: str, start: str, source_round: int | None) -> dict[tuple[int, int], float]:
  """{(pruning seed, seed): test accuracy} of one grid cell."""
  return {(r.get('pruning_seed'), r['seed']): r['test_accuracy'] for r in rows
          if (r['method'], r['start'], r['source_round']) == (method, start, source_round)}


def paired_differences(a: Mapping[tuple[int, int], float],
                       b: Mapping[tuple[int, int], float]) -> dict[tuple[int, int], float]:
  """a − b per (pruning seed, seed) both have, in key order: the same seed is the same fresh initialisation. A dense
  `b` (one pruning run's, which none changes) pairs with every run of `a` by seed."""
  if len({p for p, _ in b}) == 1 and len({p for p, _ in a}) > 1:
    by_seed = {s: v for (_, s), v in b.items()}
    b = {(p, s): by_seed[s] for p, s in a if s in by_seed}
  return {k: a[k] - b[k] for k in sorted(set(a) & set(b))}


def comparisons(rows: Sequence[dict], methods: Sequence[str]) -> list[dict]:
  """The differences the claims rest on, paired by (pruning seed and) seed, per source round, where both sides were
  trained:
  AWS signed − dense, AWS signed − LRR signed, LRR signed_keep_norm − LRR signed, and for each method signed − mask
  and signed − random_signs.

  Each: {'label', 'source_round', 'n', 'mean', 'half_width'} in fractions of accuracy (`interval`: n seeds, or n
  pruning runs where there are several); half-width NaN for n < 2.
  """
  rounds = sorted({r['source_round'] for r in rows if r['source_round'] is not None})
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
  for label, k, a, b in pairs:
    differences = paired_differences(cell(rows, *a), cell(rows, *b))
    if differences:
      mean, half_width, n = interval(differences)
      found.append({'label': label, 'source_round': k, 'n': n, 'mean': mean, 'half_width': half_width})
  return found


def _percent(value: float) -> str:
  return 'n/a' if math.isnan(value) else f'{100 * value:.2f}'


def _round_name(source_round: int | None) -> str:
  return '—' if source_round is None else str(source_round)


def _points(value: float) -> str:
  return 'n/a' if value is None or math.isnan(value) else f'{value:.2f}'


def method_of(run: str) -> str:
  """The method of a pruning run's name (`run_name`): 'aws' of 'aws' and of 'aws_seed5'."""
  return re.sub(r'_seed\d+$', '', run)


def source_barrier(rounds: Mapping[str, list], method: str, source_round: int | None) -> float | None:
  """The ψ-reset barrier of `method`'s source round, averaged over its pruning runs; None where none recorded it."""
  barriers = [r['psi_reset_barrier'] for run, records in rounds.items() if method_of(run) == method
              for r in records if r['round'] == source_round and 'psi_reset_barrier' in r]
  return float(np.mean(barriers)) if barriers else None


def paper_table(summaries: Sequence[dict], rounds: Mapping[str, list]) -> list[str]:
  """The paper's table: per method × start (PAPER_STARTS, where trained), the accuracy with its interval, the LMC and
  SGD-noise barriers, and the ψ-reset barrier of the source round (means over pruning runs where there are several;
  `rounds` maps each pruning run's name to its round records)."""
  lines = ['## The paper\'s table: accuracy (%), barriers (points of test error)', '',
           f'| method | start | source round | accuracy ± {100 * CONFIDENCE:.0f} % | LMC barrier to retrain | '
           'SGD-noise barrier | source ψ-reset barrier | n |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  order = {start: i for i, start in enumerate(PAPER_STARTS)}
  chosen = sorted((s for s in summaries if s['start'] in order), key=lambda s: (s['method'] == DENSE,
                                                                                 order[s['start']]))
  for s in sorted(chosen, key=lambda s: (s['method'] == DENSE, s['method'], s['source_round'] or 0,
                                         order[s['start']])):
    lines.append(f'| {s["method"]} | {s["start"]} | {_round_name(s["source_round"])} | {_percent(s["mean"])} ± '
                 f'{_percent(s["half_width"])} | {_points(s["lmc_barrier"])} | {_points(s["sgd_noise_barrier"])} | '
                 f'{_points(source_barrier(rounds, s["method"], s["source_round"]))} | {s["n"]} |')
  return lines + ['']


def time_table(times: Mapping[str, dict]) -> list[str]:
  """Where each method's seconds went (its pruning stage and final trainings), per time_*_s category."""
  from aws_jax import timing  # pylint: disable=import-outside-toplevel  # JAX: only once results exist
  lines = ['', '## Time account (seconds)', '', '| method | ' + ' | '.join(timing.CATEGORIES) + ' | total |',
           '| --- |' + ' ---: |' * (len(timing.CATEGORIES) + 1)]
  for method, seconds in times.items():
    lines.append(f'| {method} | ' + ' | '.join(f'{seconds.get(c, 0.0):.1f}' for c in timing.CATEGORIES) +
                 f' | {sum(seconds.values()):.1f} |')
  return lines


def markdown(summaries: Sequence[dict], differences: Sequence[dict], rounds: Mapping[str, list],
             times: Mapping[str, dict] | None = None) -> str:
  """study.md: the paper's table, the grid's means, the paired differences, each method's pruning stage, and where
  the time went."""
  lines = paper_table(summaries, rounds) + ['## Final trainings: test accuracy (%) over seeds', '',
           '| method | start | source round | % left | mean | std | n |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
  for s in summaries:
    lines.append(f'| {s["method"]} | {s["start"]} | {_round_name(s["source_round"])} | '
                 f'{100 * s["fraction_left"]:.2f} | {_percent(s["mean"])} | {_percent(s["std"])} | {s["n"]} |')
  several_runs = any(s.get('runs', 1) > 1 for s in summaries)
  unit = 'over pruning runs (each run\'s mean; n: runs)' if several_runs else 'over seeds'
  lines += ['', f'## Differences (points of test accuracy), paired by seed{" and pruning run" if several_runs else ""},'
            f' {100 * CONFIDENCE:.0f} % t-interval {unit}', '',
            '| difference | source round | mean | ± half-width | interval | n |',
            '| --- | ---: | ---: | ---: | --- | ---: |']
  for d in differences:
    bounds = ('n/a' if math.isnan(d['half_width']) else
              f'[{_percent(d["mean"] - d["half_width"])}, {_percent(d["mean"] + d["half_width"])}]')
    lines.append(f'| {d["label"]} | {d["source_round"]} | {_percent(d["mean"])} | {_percent(d["half_width"])} | '
                 f'{bounds} | {d["n"]} |')
  if not differences:
    lines.append('| (none: the grid lacks both sides of every comparison) | | | | | |')
  for run, records in rounds.items():
    lines += ['', f'## Pruning stage: {run}', '',
              '| round | % left | test acc | recalibrated test acc | test error with ψ reset | '
              'ψ-reset barrier (points) |',
              '| ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in records:  # the barrier's two ends: the recalibrated network (α = 1) and ψ reset (α = 0)
      barrier = f'{r["psi_reset_barrier"]:.2f}' if 'psi_reset_barrier' in r else 'n/a'
      reset_error = f'{r["psi_reset_test_error"][0]:.2f}' if 'psi_reset_test_error' in r else 'n/a'
      recalibrated = _percent(r['recalibrated_test_accuracy']) if 'recalibrated_test_accuracy' in r else 'n/a'
      lines.append(f'| {r["round"]} | {100 * r["fraction_left"]:.2f} | {_percent(r["test_accuracy"])} | '
                   f'{recalibrated} | {reset_error} | {barrier} |')
  if times:
    lines += time_table(times)
  return '\n'.join(lines) + '\n'


def time_account(results: dict) -> dict:
  """{category: seconds} summed over a run directory's rounds and final trainings."""
  from aws_jax import timing  # pylint: disable=import-outside-toplevel  # JAX: only once results exist
  merged = timing.merged(*results['rounds'], *results['final'])
  return {key[5:-2]: value for key, value in merged.items() if timing.is_time_field(key)}


def write_csv(rows: Sequence[dict], path: str) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def _label(method: str, start: str, source_round: int | None) -> str:
  return 'dense' if method == DENSE else f'{method.upper()} {start} r{source_round}'


def figures(config: ml_collections.ConfigDict, rows: Sequence[dict], summaries: Sequence[dict],
            differences: Sequence[dict], rounds: Mapping[str, list], run_dirs: Sequence[str], out: str) -> list[str]:
  """The study's figures (FIGURES, those the runs recorded data for) in `out`; returns their paths.

  `rounds` maps each pruning run to its round records; `run_dirs` are their run directories. A method's pruning runs
  are pooled in every figure.
  """
  from aws_jax import plots  # pylint: disable=import-outside-toplevel  # matplotlib: slow to import
  paths = {name: os.path.join(out, name) for name in FIGURES}
  title = f'{config.model} on {config.dataset}'
  stage = {}  # a method's pruning runs pooled: the figure averages them at each sparsity
  for run, records in rounds.items():
    stage.setdefault(method_of(run), []).extend((100 * r['fraction_left'], 100 * plots.stage_accuracy(r))
                                                for r in records)
  final, dense = {}, []
  for r in rows:
    if r['method'] == DENSE:
      dense.append(100 * r['test_accuracy'])
    else:
      final.setdefault((r['method'], r['start']), []).append((100 * r['fraction_left'], 100 * r['test_accuracy']))
  plots.plot_accuracy(stage, final, paths['accuracy_vs_sparsity.png'], dense=dense, title=title)
  recorded = {key for records in rounds.values() for r in records for key in r}
  if 'psi_reset_barrier' in recorded:
    plots.plot_psi_reset_barriers(run_dirs, paths['psi_reset_barrier.png'])
  else:
    del paths['psi_reset_barrier.png']
  accuracies = {_label(s['method'], s['start'], s['source_round']): (100 * s['mean'], 100 * s['half_width'])
                for s in summaries}
  gaps = {f'{d["label"]} r{d["source_round"]}': (100 * d['mean'], 100 * d['half_width']) for d in differences}
  plots.plot_comparison(accuracies, gaps, paths['starts.png'], title=title, confidence=CONFIDENCE,
                        pruning_runs=any(s.get('runs', 1) > 1 for s in summaries))
  if recorded & set(plots.SIGN_KEYS):
    plots.plot_sign_changes(run_dirs, paths['signs.png'])
  else:
    del paths['signs.png']
  from aws_jax import analyses  # pylint: disable=import-outside-toplevel  # JAX: only once results exist
  pairs = {}
  for run, directory in zip(rounds, run_dirs):
    pairs.setdefault(method_of(run), []).extend(analyses.stored_pairs(RunDir(directory)))
  if any(plots.pair_kind(c) for curves in pairs.values() for c in curves):
    plots.plot_pair_curves(pairs, paths['lmc.png'], title=title)
  else:
    del paths['lmc.png']
  return list(paths.values())


def run(config: ml_collections.ConfigDict, workdir: str, run_dirs: Mapping[str, str] | None = None) -> dict:
  """Runs (or resumes) the grid of `config.study` and writes the study's files in `workdir`.

  One `Setup` (data loaded once, each step compiled once) serves every pruning run and final training. Each run
  directory is locked while it is used and the workdir while the study's files are written, so studies of
  different pruning seeds can run at once on one workdir (on a GPU, faster than in turn); the full grid,
  run after them, trains nothing more and writes the combined tables.
  `run_dirs` may place a pruning run's directory elsewhere, by its `run_name` (e.g. one that `python -m aws_jax.main`
  already filled with the same config). Returns {'rows', 'summaries', 'differences', 'rounds': {run name: round
  records}, 'run_dirs', 'files'}. Raises UserError for a bad grid before anything is created. SIGTERM / SIGINT stop it
  after the current step with a checkpoint written (`preemption.Stopped`); calling it again resumes.
  """
  validate(config)
  from aws_jax import engine, preemption, protocol, reporting  # pylint: disable=import-outside-toplevel  # heavy
  runs = {run_name(config, m, p): (m, p, index == 0) for index, p in enumerate(pruning_seeds(config))
          for m in config.study.methods}
  directories = {name: (run_dirs or {}).get(name, os.path.join(workdir, name)) for name in runs}
  study_dir = RunDir(workdir)
  study_dir.check_writable()
  rows, rounds, times = [], {}, {}
  # The workdir is shared with other studies of it (--parallel), never with another command.
  with Lock(study_dir, shared=True, holder='study'), preemption.handling_signals():  # SIGTERM / SIGINT: stop after
    setup = engine.make_setup(config)                                                # the step, with a checkpoint
    for name, (method, pruning_seed, first) in runs.items():  # each run directory locked while it is used
      seeded = method_config(config, method, pruning_seed)
      rundir = RunDir(directories[name])
      rundir.check_writable()
      reporting.say(f'study: {method}, pruning seed {pruning_seed}, in {directories[name]}')
      with Lock(rundir, holder='study'):
        protocol.prepare(seeded, rundir, method)
        results = protocol.run_method(setup.with_config(seeded), rundir, method=method, stage='all',
                                      finals=plan(config, dense=first)[method], seeds=tuple(config.study.seeds))
      rows += rows_of(config, method, results, pruning_seed, dense=first)
      rounds[name] = results['rounds']
      times[name] = time_account(results)
    rows = sort_rows(rows, config.study.methods, config.study.starts)
    summaries, differences = group_summaries(rows), comparisons(rows, config.study.methods)
    files = write_study_files(config, study_dir, rows, summaries, differences, rounds, times, directories)
  return {'rows': rows, 'summaries': summaries, 'differences': differences, 'rounds': rounds,
          'run_dirs': directories, 'files': files}


def write_study_files(config, study_dir: RunDir, rows, summaries, differences, rounds, times, directories) -> list:
  """study.csv, study.md and the figures; returns their paths. Other studies of the workdir wait their turn."""
  workdir = study_dir.root
  with Lock(study_dir, wait=True, path=study_dir.study_files_lock):
    write_csv(rows, os.path.join(workdir, 'study.csv'))
    table = markdown(summaries, differences, rounds, times)
    with open(os.path.join(workdir, 'study.md'), 'w') as f:
      f.write(table)
    files = [os.path.join(workdir, name) for name in ('study.csv', 'study.md')]
    files += figures(config, rows, summaries, differences, rounds, list(directories.values()), workdir)
  print(table, flush=True)
  return files


def last_line(path: str) -> str:
  """The last non-empty line of a log (of a progress bar's rewrites, the last)."""
  with open(path, errors='replace') as f:
    lines = [line.rsplit('\r', 1)[-1].strip() for line in f.read().splitlines()]
  return next((line for line in reversed(lines) if line), '(empty)')


def without_flags(arguments: Sequence[str], names: Sequence[str]) -> list[str]:
  """`arguments` less the flags `names` (--name=V, --name V, and --[no]name for booleans), up to a `--`."""
  kept, skip = [], False
  for index, argument in enumerate(arguments):
    if argument == '--':
      return kept + list(arguments[index:])
    if skip:
      skip = False
      continue
    name = argument.lstrip('-').split('=', 1)[0]
    if argument.startswith('-') and (name in names or (name.startswith('no') and name[2:] in names)):
      skip = '=' not in argument and name.startswith('config.')  # a config override's value may come next
      continue
    kept.append(argument)
  return kept


class LogFollower:
  """The complete new lines of a growing log, each time it is asked."""

  def __init__(self, path: str):
    self.path, self.offset, self.pending = path, 0, b''

  def new_lines(self) -> list[str]:
    with open(self.path, 'rb') as f:
      f.seek(self.offset)
      data = self.pending + f.read()
    self.offset += len(data) - len(self.pending)
    *lines, self.pending = data.split(b'\n')
    return [line.decode(errors='replace').rsplit('\r', 1)[-1] for line in lines]


# The lines of a process's log that its parent prints too (not its tables).
FOLLOWED = re.compile(r'^(study: |resuming |round |final |error|warning|note)')


def run_at_once(config: ml_collections.ConfigDict, workdir: str, arguments: Sequence[str]) -> dict:
  """Each pruning seed's part of the study in a process of its own, all at once, then `run` for the combined tables (it
  trains nothing more). For a GPU that one process leaves mostly idle (a TPU takes one process at a time): the
  processes share the device (XLA_PYTHON_CLIENT_PREALLOCATE=false, unless set). The first pruning seed's process
  trains the dense start, the others leave it out. `arguments` are the command's own (sys.argv[1:]); each process
  writes its output to WORKDIR/study_seed<p>.log (round lines, no progress bars), and its round, final, error and
  warning lines are printed here too, after `[pruning seed p]`. SIGTERM or SIGINT is passed on to every process,
  which stops with a checkpoint; then this raises `preemption.Stopped`. A failed process raises UserError with its
  log's last line, after the others end.
  """
  seeds = pruning_seeds(config)
  without_dense = tuple(s for s in config.study.starts if s != DENSE) or tuple(config.study.starts)
  os.makedirs(workdir, exist_ok=True)
  with Lock(RunDir(workdir), shared=True, holder='study --parallel'):  # the processes share it; other commands wait
    run_processes(seeds, without_dense, arguments, workdir)
  return run(config, workdir)


def run_processes(seeds, without_dense, arguments, workdir: str) -> None:
  """`run_at_once`'s processes, one per pruning seed, followed until they end."""
  from aws_jax import preemption  # pylint: disable=import-outside-toplevel
  environ = {**os.environ, 'XLA_PYTHON_CLIENT_PREALLOCATE': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')}
  processes, logs, started = {}, {}, time.monotonic()
  for index, seed in enumerate(seeds):
    replaced = ['parallel', 'config.progress', 'config.study.pruning_seeds'] + ['config.study.starts'] * bool(index)
    command = [sys.executable, '-m', 'aws_jax.study', *without_flags(arguments, replaced), '--config.progress=False',
               f'--config.study.pruning_seeds=({seed},)']  # a log file: round lines, no progress bars
    if index:
      command.append(f'--config.study.starts={without_dense!r}')
    logs[seed] = os.path.join(workdir, f'study_seed{seed}.log')
    with open(logs[seed], 'w') as log:  # a session of its own: a terminal's Ctrl-C reaches it once, from here
      processes[seed] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ,
                                         start_new_session=True)
  print(f'{len(seeds)} pruning seeds at once ({", ".join(map(str, seeds))}); their output: '
        f'{os.path.join(workdir, "study_seed<p>.log")}; their round lines here', flush=True)
  followers, failed = {seed: LogFollower(path) for seed, path in logs.items()}, []
  with preemption.handling_signals():
    forwarded = None
    while processes:
      if preemption.requested() and not forwarded:
        forwarded = preemption.requested()
        for process in processes.values():
          process.send_signal(forwarded)
      for seed, process in list(processes.items()):
        ended = process.poll() is not None  # before reading its log: then every line it wrote is read
        for line in followers[seed].new_lines():
          if FOLLOWED.match(line):
            print(f'[pruning seed {seed}] {line}', flush=True)
        if ended:
          del processes[seed]
          outcome = 'done' if process.returncode == 0 else f'exit {process.returncode}: {last_line(logs[seed])}'
          print(f'pruning seed {seed}: {outcome} ({time.monotonic() - started:.0f} s)', flush=True)
          if process.returncode:
            failed.append((seed, process.returncode))
      time.sleep(0.2)
  if forwarded:
    raise preemption.Stopped(forwarded, f'stopped by {signal.Signals(forwarded).name}: each pruning seed\'s process '
                                        f'wrote a checkpoint; rerun the same command to resume')
  if failed:
    seed, status = min(failed, key=lambda f: seeds.index(f[0]))  # the first in the command's order
    raise UserError(f'pruning seed {seed}\'s process failed (exit {status}): {last_line(logs[seed])} '
                    f'(whole output: {logs[seed]}); what the others trained is kept, and rerunning resumes')


def main(argv, config_flag: flags.FlagHolder, workdir_flag: flags.FlagHolder, parallel: bool = False):
  cli.check_no_arguments(argv)
  config = cli.load_config(config_flag)
  try:
    validate(config)
  except UserError as e:
    cli.exit_with(e)
  cli.check_workdir(workdir_flag.value, shared=True)  # refused beside another command; other studies may share it
  from aws_jax import allocator  # pylint: disable=import-outside-toplevel
  allocator.restart_with_tcmalloc()  # after the checks above: a bad input is answered without the restart
  from aws_jax import preemption  # pylint: disable=import-outside-toplevel
  try:
    with rundir_lib.left_as_found(workdir_flag.value):  # a refused study (e.g. no dataset) leaves nothing behind
      if parallel and len(pruning_seeds(config)) > 1:
        run_at_once(config, workdir_flag.value, sys.argv[1:])
      else:
        if parallel:
          print('note: --parallel runs the pruning seeds at once, and this study has one '
                '(--config.study.pruning_seeds gives more): it runs as usual', file=sys.stderr, flush=True)
        run(config, workdir_flag.value)
  except preemption.Stopped as e:
    cli.exit_with(e, status=128 + e.signum)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  # Defined here, not at import: aws_jax.main defines the same flags, and notebooks import this module.
  __doc__ += '\n' + config_lib.describe_keys()
  _CONFIG = cli.define_config('The study\'s config; config.study is the grid.')
  _WORKDIR = cli.define_path('workdir', None, 'Directory of the study: a run directory per method, the tables and '
                             'the figures.')
  _PARALLEL = flags.DEFINE_boolean(
      'parallel', False, 'With several study.pruning_seeds: run each pruning seed\'s part in a process of its own, '
      'all at once, then write the combined tables (on a GPU that one process leaves mostly idle; a TPU takes one '
      'process at a time; on a CPU the processes only share its cores). Output: WORKDIR/study_seed<p>.log.')
  flags.mark_flags_as_required(['config', 'workdir'])
  flags.adopt_module_key_flags(cli)
  app.run(lambda argv: main(argv, _CONFIG, _WORKDIR, _PARALLEL.value), flags_parser=cli.parse_flags)
