"""What aws_jax's command lines share: flag parsing, configs by path or by name, paths resolved once, workdir checks,
quiet logging, one-line errors.

Everything here is light (no JAX): a bad flag, config value, path or workdir is answered within a second or two.
"""
import contextlib
import glob
import importlib.util
import logging as std_logging
import os
import sys
from typing import Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

import aws_jax
from aws_jax import caches
from aws_jax import config as config_lib
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError

HELP_FLAGS = {'--help', '-h', '-?', '--helpshort', '--helpfull'}


def exit_with(message: str, status: int = 2):
  """Prints `message` on one line to stderr and exits with `status`."""
  print('error: ' + ' '.join(str(message).replace("\\n", ' ').split()), file=sys.stderr, flush=True)
  sys.exit(status)


# --- Configs: a file, or a name of the configs that ship with aws_jax. -------------------------------------------

def configs_directory() -> str:
  """The configs shipped with aws_jax: aws_jax/configs in an installed package, configs/ beside it in a clone."""
  package = os.path.dirname(os.path.abspath(aws_jax.__file__))
  installed = os.path.join(package, 'configs')
  if os.path.isfile(os.path.join(installed, 'digits.py')):
    return installed
  return os.path.join(os.path.dirname(package), 'configs')


def config_names() -> list[str]:
  """The names `--config=NAME[:PRESET]` accepts: the shipped configs' file names."""
  files = glob.glob(os.path.join(configs_directory(), '*.py'))
  return sorted(os.path.basename(f)[:-3] for f in files if not os.path.basename(f).startswith('_'))


def config_file(spec: str) -> str:
  """`--config`'s value as an absolute 'FILE[:PRESET]': a path (absolute or relative to the working directory) or the
  name of a shipped config; raises UserError, on one line, for a missing file, an unknown name or a syntax error."""
  file, colon, preset = spec.partition(':')
  names = config_names()
  if os.sep not in file and not file.endswith('.py') and not os.path.isfile(file):
    if file not in names:
      raise UserError(f'--config={spec}: no config named {file!r}; give a config file (e.g. configs/digits.py) or '
                      f'one of the names {", ".join(names)}')
    file = os.path.join(configs_directory(), file + '.py')
  path = os.path.abspath(os.path.expanduser(file))
  if not os.path.isfile(path):
    raise UserError(f'--config={spec}: no such file {path}; give a config file or one of the names '
                    f'{", ".join(names)}')
  try:
    with open(path, encoding='utf-8') as f:
      compile(f.read(), path, 'exec')
  except SyntaxError as e:
    raise UserError(f'--config={spec}: {type(e).__name__} in {path} line {e.lineno}: {e.msg}; fix the file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'--config={spec}: cannot read {path} ({e}); give a readable config file') from None
  return path + colon + preset


def get_config(spec: str) -> ml_collections.ConfigDict:
  """The config `--config=SPEC` gives (a shipped config's NAME[:PRESET], or FILE[:PRESET]), for Python and notebooks."""
  path, _, preset = config_file(spec).partition(':')
  module_spec = importlib.util.spec_from_file_location(f'aws_jax_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*([preset] if preset else []))


def define_config(purpose: str) -> flags.FlagHolder:
  """The `--config` flag: a config file or a shipped config's name, with an optional :PRESET."""
  return config_flags.DEFINE_config_file(
      'config', None, f'{purpose} A config file (e.g. configs/digits.py) or the name of one shipped with aws_jax '
      f'({", ".join(config_names())}); :PRESET after either picks a preset (e.g. cifar100:resnet50).',
      lock_config=True)


def _with_config_resolved(argv: list[str]) -> list[str]:
  """`argv` with `--config`'s value replaced by `config_file`'s (both --config=X and --config X)."""
  argv = list(argv)
  for i, argument in enumerate(argv[1:], start=1):
    if argument == '--':
      break
    if argument.startswith('--config='):
      argv[i] = '--config=' + config_file(argument[len('--config='):])
    elif argument == '--config' and i + 1 < len(argv):
      argv[i + 1] = config_file(argv[i + 1])
  return argv


def load_config(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The config of a `define_config` flag, validated; a bad one exits on one line."""
  try:
    config = holder.value
    config.get('model')  # a config file that failed to load raises here
  except OSError as e:
    exit_with(str(e).strip().splitlines()[-1].strip())
  try:
    config_lib.validate(config)
  except UserError as e:
    exit_with(e)
  return config


# --- Paths: made absolute once, where the user gave them. ----------------------------------------------------------

def absolute(path: str) -> str:
  """`path` made absolute against the working directory (with ~ expanded); empty stays empty."""
  return os.path.abspath(os.path.expanduser(path)) if path else path


class _PathParser(flags.ArgumentParser):
  def parse(self, argument):
    return absolute(argument)

  def flag_type(self):
    return 'path'


class _PathListParser(flags.ListParser):
  def parse(self, argument):
    return [absolute(path) for path in super().parse(argument)]


def define_path(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """A string flag holding a path, made absolute (relative to the working directory) as it is parsed."""
  return flags.DEFINE(_PathParser(), name, default, help_text)


def define_path_list(name: str, help_text: str) -> flags.FlagHolder:
  """A comma-separated list of paths, each made absolute as it is parsed."""
  return flags.DEFINE(_PathListParser(), name, [], help_text, serializer=flags.CsvListSerializer(','))


# --- Parsing, logging, checks. -----------------------------------------------------------------------------------

def parse_flags(argv, compilation_cache: bool = True):
  """absl's flag parsing, with a bad flag, config or override reported on one line instead of a traceback; `--help`
  exits 0; library logging is turned down (`quiet_logging`); JAX's persistent compilation cache is on
  (`caches.use_compilation_cache`) unless `compilation_cache` is False."""
  try:
    if 'config' in flags.FLAGS:
      argv = _with_config_resolved(argv)
    remaining = flags.FLAGS(argv)
  except UserError as e:
    exit_with(e)
  except SystemExit:
    if HELP_FLAGS & set(argv[1:]):  # absl exits with 1 after printing help; asking for help is no failure
      sys.exit(0)
    raise
  except (AttributeError, KeyError) as e:
    exit_with('unknown config key ' + str(e).replace("\\'", '').replace("\\n", ' ').strip('\'"') +
              ' (--help lists the config keys)')
  except (flags.Error, TypeError, ValueError) as e:
    if 'Traceback' in str(e):  # an exception in a config file's get_config, e.g. an unknown preset: its last line
      exit_with(f'{str(e).strip().splitlines()[-1]} (from the --config file)')
    exit_with(f'{e} (see --help)')
  except (ImportError, NameError) as e:
    exit_with(f'the config file failed to load ({type(e).__name__}: {e}); fix it')
  quiet_logging()
  if compilation_cache:
    caches.use_compilation_cache()
  return remaining


class _OwnWarningsOnly(std_logging.Filter):
  """Passes errors, and warnings logged by aws_jax itself; drops the libraries' warnings (orbax logs through absl)."""

  def filter(self, record):
    return record.levelno >= std_logging.ERROR or record.pathname.startswith(_PACKAGE_DIRECTORY)


_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(aws_jax.__file__)) + os.sep


def quiet_logging():
  """Library logging (JAX, XLA, orbax, absl) down to errors unless the user asked for it with --verbosity / -v;
  aws_jax's own warnings (e.g. oneDNN unavailable) stay."""
  if flags.FLAGS['verbosity'].present:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # XLA's C++ logging (its slow-compile alarms on a loaded machine
  # too): what goes wrong reaches aws_jax as an exception, reported on one line
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_OwnWarningsOnly())
  for name in ('jax', 'orbax'):
    std_logging.getLogger(name).setLevel(std_logging.ERROR)


def check_no_arguments(argv):
  """Exits on one line if anything but flags was given."""
  if len(argv) > 1:
    exit_with(f'unexpected arguments: {" ".join(argv[1:])}')


def check_workdir(workdir: str, config: ml_collections.ConfigDict | None = None, probe_lock: bool = True,
                  shared: bool = False) -> None:
  """Exits on one line unless `workdir` is (or can be made) a writable directory that no other command is using (and,
  given `config`, holds no run of another config). `shared`: probe the lock as a study holds it (studies may share a
  workdir, nothing else may). `probe_lock=False` where several processes of one run share the workdir: its lock is
  the run's own, held by process 0, and a probe would find it held by a sibling."""
  try:
    with rundir_lib.left_as_found(workdir, always=True):  # the probe leaves no directory or lock file behind
      rundir = rundir_lib.RunDir(workdir)
      rundir.check_writable()
      if config is not None:
        rundir_lib.check_same_config(rundir, config_lib.fingerprint(config), config.overwrite)
      if probe_lock:
        with rundir_lib.Lock(rundir, shared=shared):
          pass
  except UserError as e:
    exit_with(e)


@contextlib.contextmanager
def holding(workdirs: Sequence[str], holder: str):
  """Holds the lock of each existing directory of `workdirs` while a command reads or adds to a run there; exits on
  one line if another command is using one (a missing directory is left to the command's own check)."""
  with contextlib.ExitStack() as stack:
    for workdir in workdirs:
      if os.path.isdir(workdir):
        try:
          stack.enter_context(rundir_lib.Lock(rundir_lib.RunDir(workdir), holder=holder))
        except UserError as e:
          exit_with(e)
    yield
