"""Command line: `python -m aws_jax.main --config=configs/vgg.py --workdir=runs/vgg16_c10 [--config.KEY=VALUE]`."""
import sys

from absl import app, flags
from ml_collections import config_flags

from aws_jax import protocol
from aws_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def exit_with(message: str):
  """Prints `message` on one line to stderr and exits with status 2."""
  print('error: ' + ' '.join(str(message).replace("\\n", ' ').split()), file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override reported on one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    exit_with('unknown config key ' + str(e).replace("\\'", '').replace("\\n", ' ').strip('\'"') +
              ' (see the config file for its keys)')
  except (flags.Error, TypeError, ValueError) as e:
    exit_with(f'{e} (see --helpfull)')


def main(argv):
  if len(argv) > 1:
    exit_with(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = _CONFIG.value
    config.get('model')  # a config file that failed to load raises here
  except OSError as e:
    exit_with(str(e).splitlines()[0] + ': ' + str(e).strip().splitlines()[-1].strip())
  try:
    protocol.run(config, _WORKDIR.value)
  except UserError as e:
    exit_with(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
