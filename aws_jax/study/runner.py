"""Running a study: each variant's pruning runs and their final trainings (resuming whatever is done), then the
study's files. One `Setup` (data, model, compiled steps) serves every variant that leaves them as they are."""
from typing import Mapping

import ml_collections

from aws_jax import analyses, engine, preemption, protocol, reporting
from aws_jax.rundir import Lock, RunDir, StudyDir
from aws_jax.study import grid, report, stats
from aws_jax.study.figures import figures


def _setup_for(config: ml_collections.ConfigDict, setups: list) -> engine.Setup:
  """A setup for `config`: an earlier one where they share data, model and analyses' inputs, else a new one."""
  for setup in setups:
    if grid.shares_setup(setup.config, config):
      return setup.with_config(config)
  setups.append(engine.make_setup(config))
  return setups[-1]


def train_run(setup: engine.Setup, config: ml_collections.ConfigDict, method: str, pruning_seed: int, first: bool,
              rundir: RunDir) -> dict:
  """One pruning run of the grid and its final trainings, in `rundir` (locked while it is used); its results."""
  seeded = grid.method_config(config, method, pruning_seed)
  rundir.check_writable()
  with Lock(rundir, holder='study'):
    protocol.prepare(seeded, rundir, method)
    return protocol.run_method(setup.with_config(seeded), rundir, method=method, stage='all',
                               finals=grid.plan(config, dense=first)[method], seeds=tuple(config.study.seeds))


def run(config: ml_collections.ConfigDict, workdir: str, run_dirs: Mapping[str, str] | None = None) -> dict:
  """Trains what the grid lacks in `workdir`, then writes study.csv, study.md and the figures; returns the rows, the
  summaries, the differences (within and between variants), the rounds, the run directories and the files.
  `run_dirs` may place pruning runs elsewhere than in `workdir`: {run name ('aws', 'aws_seed3', 'variant/aws'):
  directory}.

  The workdir is shared with other studies of it (`study --parallel`), never with another command; SIGTERM / SIGINT
  stop it after the current step with a checkpoint written.
  """
  grid.validate(config)
  analyses.check(config)
  study_dir = StudyDir(workdir)
  study_dir.own.check_writable()
  variants = grid.variants(config)
  names = [name for name, _ in variants]
  placed = {key: RunDir(directory) for key, directory in (run_dirs or {}).items()}
  rows, rounds, times, run_dirs, setups = [], {}, {}, {}, []
  with Lock(study_dir.own, shared=True, holder='study'), preemption.handling_signals():
    for name, variant in variants:
      home = study_dir if name is None else study_dir.variant(name)
      setup = _setup_for(variant, setups)
      for index, pruning_seed in enumerate(grid.pruning_seeds(variant)):
        for method in variant.study.methods:
          run_name = grid.run_name(variant, method, pruning_seed)
          key = run_name if name is None else f'{name}/{run_name}'
          run_dirs[key] = placed.get(key) or home.run(run_name)
          reporting.say(f'study: {method}, pruning seed {pruning_seed}' + (f', variant {name}' if name else '') +
                        f', in {run_dirs[key].root}')
          results = train_run(setup, variant, method, pruning_seed, index == 0, run_dirs[key])
          rows += report.rows_of(variant, method, results, pruning_seed, dense=index == 0, variant=name)
          rounds[key] = results['rounds']
          times[key] = report.time_account(results)
    rows = report.sort_rows(rows, config.study.methods, config.study.starts, names)
    summaries = stats.group_summaries(rows)
    differences = [d for name in names for d in stats.comparisons(rows, config.study.methods, variant=name)]
    between = stats.variant_comparisons(rows, names)
    with Lock(study_dir.own, wait=True, path=study_dir.files_lock):  # other studies of the workdir wait their turn
      report.write_csv(rows, study_dir.csv)
      table = report.markdown(summaries, differences, rounds, times, between, dict(config.study.variants))
      with open(study_dir.markdown, 'w') as f:
        f.write(table)
      files = [study_dir.csv, study_dir.markdown]
      files += figures(config, study_dir, rows, summaries, differences + between, rounds, run_dirs)
  print(table, flush=True)
  return {'rows': rows, 'summaries': summaries, 'differences': differences, 'between_variants': between,
          'rounds': rounds, 'run_dirs': {key: rundir.root for key, rundir in run_dirs.items()}, 'files': files}
