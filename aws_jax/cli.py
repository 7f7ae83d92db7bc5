"""What aws_jax's command lines share: flag parsing, config files, workdir checks, quiet logging, one-line errors.

Everything here is light (no JAX): a bad flag, config value or workdir is answered within a second or two.
"""
import sys

import ml_collections
from absl import flags, logging

from aws_jax import config as config_lib
from aws_jax.errors import UserError
from aws_jax.rundir import Lock, RunDir

HELP_FLAGS = {'--help', '-h', '-?', '--helpshort', '--helpfull'}


def exit_with(message: str, status: int = 2):
  """Prints `message` on one line to stderr and exits with `status`."""
  print('error: ' + ' '.join(str(message).replace("\\n", ' ').split()), file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override reported on one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if HELP_FLAGS & set(argv[1:]):  # absl exits with 1 after printing help; asking for help is no failure
      sys.exit(0)
    raise
  except (AttributeError, KeyError) as e:
    exit_with('unknown config key ' + str(e).replace("\\'", '').replace("\\n", ' ').strip('\'"') +
              ' (--help lists the config keys)')
  except (flags.Error, TypeError, ValueError) as e:
    exit_with(f'{e} (see --help)')


def load_config(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The config of a `config_flags.DEFINE_config_file` flag, validated; a bad one exits on one line."""
  try:
    config = holder.value
    config.get('model')  # a config file that failed to load raises here
  except OSError as e:
    exit_with(str(e).splitlines()[0] + ': ' + str(e).strip().splitlines()[-1].strip())
  try:
    config_lib.validate(config)
  except UserError as e:
    exit_with(e)
  return config


def check_no_arguments(argv):
  """Exits on one line if anything but flags was given."""
  if len(argv) > 1:
    exit_with(f'unexpected arguments: {" ".join(argv[1:])}')


def quiet_logging():
  """Library INFO logging (orbax, absl) off unless the user asked for it with --verbosity / -v."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def check_workdir(workdir: str) -> None:
  """Exits on one line unless `workdir` is (or can be made) a writable directory that no other run is using."""
  try:
    rundir = RunDir(workdir)
    rundir.check_writable()
    with Lock(rundir):
      pass
  except UserError as e:
    exit_with(e)
