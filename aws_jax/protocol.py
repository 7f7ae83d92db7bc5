"""The AWS protocol as a composition of stages: dense warm-up and pruning rounds, then final trainings from the
signed mask, in one run directory.

`run(config, workdir)` is what `python -m aws_jax.main` calls; `run_method` is what a study calls once per method
with one shared `Setup`. Every round and final training is checkpointed; rerunning continues from the last complete
checkpoint with the same results.
"""
import contextlib

import jax
import ml_collections
from jax.experimental import multihost_utils

from aws_jax import config as config_lib
from aws_jax import analyses, preemption, reporting, stages
from aws_jax.engine import Setup, make_setup
from aws_jax.rundir import Lock, RunDir, check_same_config


def prepare(config: ml_collections.ConfigDict, rundir: RunDir, method: str) -> None:
  """Refuses a run directory holding checkpoints of another config (or of an earlier aws_jax whose runs the new keys'
  values would change) unless told to overwrite; records this config. A directory whose run never completed a
  checkpoint holds nothing to lose: it is simply taken over."""
  rundir.check_writable()
  fingerprint = config_lib.fingerprint(config, method=method)
  if check_same_config(rundir, fingerprint, config.overwrite) and reporting.is_main_process():
    rundir.clear()
  reporting.write_json(rundir.config, fingerprint)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('aws_jax workdir prepared')


def run_method(setup: Setup, rundir: RunDir, *, method: str, stage: str, finals, seeds) -> dict:
  """The stages of `method` in `rundir`: the pruning stage (`stage` 'all' or 'prune'), then for each
  (source round, starts) of `finals` the final trainings of those starts × `seeds` (`stage` 'all' or 'final'; source
  round None: the config's signs file). Writes and returns results.json's content."""
  log = reporting.MetricsLog(rundir)
  try:
    if stage in ('all', 'prune'):
      stages.pruning_stage(setup, rundir, method, log)
      reporting.write_json(rundir.results, stages.collect_results(rundir, setup.config.final.epochs))
    if stage in ('all', 'final'):
      for source_round, start_names in finals:
        stages.final_stage(setup, rundir, source_round, start_names, seeds, log)
  finally:
    log.close()
  results = stages.collect_results(rundir, setup.config.final.epochs)
  reporting.write_json(rundir.results, results)
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stages `config.stage` asks for in `workdir`; returns (and writes) results.json's content.

  Holds the workdir's lock throughout (process 0). SIGTERM / SIGINT stop it after the current step with a checkpoint
  written (`preemption.Stopped`); calling it again resumes.
  """
  config_lib.validate(config)
  analyses.check(config)
  rundir = RunDir(workdir)
  rundir.check_writable()
  lock = Lock(rundir, holder='main') if reporting.is_main_process() else contextlib.nullcontext()
  with lock, preemption.handling_signals():
    setup = make_setup(config)  # before config.json: a refusal here (no dataset) leaves only the lock behind
    prepare(config, rundir, config.method)
    source_round = None if config.final.signed_mask else config_lib.source_round(config)
    results = run_method(setup, rundir, method=config.method, stage=config.stage,
                         finals=[(source_round, tuple(config.final.modes))], seeds=tuple(config.final.seeds))
  reporting.say(reporting.format_table(results))
  return results
