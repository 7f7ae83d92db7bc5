"""Command line: `python -m aws_jax.main --config=configs/vgg.py --workdir=runs/vgg16_c10 [--config.KEY=VALUE]`."""
import jax
from absl import app, flags
from ml_collections import config_flags

from aws_jax import allocator, cli, protocol
from aws_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.json.')
_DISTRIBUTED = flags.DEFINE_boolean(
    'distributed', False, 'Several hosts: call jax.distributed.initialize() first (on TPU pods, Slurm and Open MPI '
    'the three flags below are detected; elsewhere give them).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (with --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --distributed).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (with --distributed).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.check_no_arguments(argv)
  config = cli.load_config(_CONFIG)
  if _DISTRIBUTED.value:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU hosts talk over gloo
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    protocol.run(config, _WORKDIR.value)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  allocator.restart_with_tcmalloc()
  app.run(main, flags_parser=cli.parse_flags)
