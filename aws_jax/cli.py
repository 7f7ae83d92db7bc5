"""What aws_jax's command lines share: flag parsing, config files, and errors on one line (exit status 2)."""
import sys

import ml_collections
from absl import flags


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


def load_config(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The config of a `config_flags.DEFINE_config_file` flag; a file that failed to load exits on one line."""
  try:
    config = holder.value
    config.get('model')  # a config file that failed to load raises here
  except OSError as e:
    exit_with(str(e).splitlines()[0] + ': ' + str(e).strip().splitlines()[-1].strip())
  return config


def check_no_arguments(argv):
  """Exits on one line if anything but flags was given."""
  if len(argv) > 1:
    exit_with(f'unexpected arguments: {" ".join(argv[1:])}')
