"""Command line: `python -m aws_jax.study --config=CONFIG --workdir=W [--parallel] [--config.KEY=VALUE ...]`.

Runs the study's grid (config.study) in W, resuming what is done, then writes study.csv, study.md and the figures.
"""
import importlib
import sys

from absl import app, flags

from aws_jax import cli
from aws_jax import config as config_lib
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError
from aws_jax.study import grid


def main(argv, config_flag: flags.FlagHolder, workdir_flag: flags.FlagHolder, at_once: bool = False):
  cli.check_no_arguments(argv)
  config = cli.load_config(config_flag)
  try:
    grid.validate(config)
  except UserError as e:
    cli.exit_with(e)
  cli.check_workdir(workdir_flag.value, shared=True)  # refused beside another command; other studies may share it
  from aws_jax import allocator  # pylint: disable=import-outside-toplevel
  allocator.restart_with_tcmalloc()  # after the checks above: a bad input is answered without the restart
  from aws_jax import preemption  # pylint: disable=import-outside-toplevel  # JAX: after the checks above
  from aws_jax.study import parallel, runner  # pylint: disable=import-outside-toplevel
  try:
    with rundir_lib.left_as_found(workdir_flag.value):  # a refused study (e.g. no dataset) leaves nothing behind
      if at_once and len(grid.pruning_seeds(config)) > 1:
        parallel.run_at_once(config, workdir_flag.value, sys.argv[1:])
      else:
        if at_once:
          print('note: --parallel runs the pruning seeds at once, and this study has one '
                '(--config.study.pruning_seeds gives more): it runs as usual', file=sys.stderr, flush=True)
        runner.run(config, workdir_flag.value)
  except preemption.Stopped as e:
    cli.exit_with(e, status=128 + e.signum)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  # Defined here, not at import: aws_jax.main defines the same flags, and notebooks import aws_jax.study.
  __doc__ = importlib.import_module('aws_jax.study').__doc__ + '\n' + config_lib.describe_keys()
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
