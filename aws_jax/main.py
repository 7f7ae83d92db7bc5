"""Command line: `python -m aws_jax.main --config=configs/vgg.py --workdir=runs/vgg16_c10 [--config.KEY=VALUE]`."""
from absl import app, flags
from ml_collections import config_flags

from aws_jax import cli, protocol
from aws_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.check_no_arguments(argv)
  config = cli.load_config(_CONFIG)
  try:
    protocol.run(config, _WORKDIR.value)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
