"""Command line: `python -m aws_jax.main --config=configs/vgg.py --workdir=runs/vgg16_c10 [--config.KEY=VALUE]`
(or `--config=vgg`: the configs shipped with aws_jax by name).

Runs the AWS protocol (docs/method.md): dense warm-up, pruning rounds, final trainings from the signed mask. Rerun the
same command to resume; SIGTERM or Ctrl-C stop after the current step with a checkpoint written.
"""
from absl import app, flags

from aws_jax import cli
from aws_jax import config as config_lib
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError

_CONFIG = cli.define_config('The run\'s config; its keys are listed above.')
_WORKDIR = cli.define_path('workdir', None, 'Directory for checkpoints, metrics and results.json.')
_DISTRIBUTED = flags.DEFINE_boolean(
    'distributed', False, 'Several hosts: call jax.distributed.initialize() first (on TPU pods, Slurm and Open MPI '
    'the three flags below are detected; elsewhere give them).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (with --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --distributed).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (with --distributed).')
flags.mark_flags_as_required(['config', 'workdir'])
flags.adopt_module_key_flags(cli)  # --help lists --config and --workdir, defined through cli


def main(argv):
  cli.check_no_arguments(argv)
  config = cli.load_config(_CONFIG)
  cli.check_workdir(_WORKDIR.value, config, probe_lock=not _DISTRIBUTED.value)
  from aws_jax import allocator  # pylint: disable=import-outside-toplevel
  allocator.restart_with_tcmalloc()  # after the checks above: a bad input is answered without the restart
  import jax  # pylint: disable=import-outside-toplevel
  from aws_jax import preemption, protocol  # pylint: disable=import-outside-toplevel
  if _DISTRIBUTED.value:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU hosts talk over gloo
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    with rundir_lib.left_as_found(_WORKDIR.value):  # a refused run (e.g. no dataset) leaves the workdir as it was
      protocol.run(config, _WORKDIR.value)
  except preemption.Stopped as e:
    cli.exit_with(e, status=128 + e.signum)
  except UserError as e:
    cli.exit_with(e)


__doc__ += '\n' + config_lib.describe_keys()

if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
