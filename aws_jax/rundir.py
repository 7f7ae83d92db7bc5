"""A run directory: every path a run writes, named in one place; checked before anything heavy loads and locked
while a run uses it. No JAX here.

  config.json             the config fingerprint (`config.fingerprint`)
  results.json            every pruning round and finished final training, with their analyses
  metrics.jsonl           one line per (phase, epoch); tensorboard/ the same scalars
  checkpoints/prune/N     pruning round N (0: the dense warm-up)
  checkpoints/rewind/E    the warm-up epoch imp_wr rewinds to
  checkpoints/final/START_roundR_seedS/E   a final training after E epochs
  checkpoints/partial/LABEL/STEP           inside a round or an epoch (removed when the phase completes)
  analyses/NETWORK/NAME.json               an analysis of a trained network (`aws_jax.analyses`)
  barriers/NAME.json, .png                 curves of `python -m aws_jax.barrier`

A study directory (`StudyDir`) holds run directories, one per method and pruning seed, and the study's files:

  study.csv, study.md, *.png              the grid's rows, tables and figures (`aws_jax.study`)
  <method>/, <method>_seed<p>/            the run directories (the latter for pruning seeds other than config.seed)
  study_seed<p>.log                       a pruning seed's process under `study --parallel`
  <variant>/                              a study directory per variant where `study.variants` names some
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil

from aws_jax import config as config_lib
from aws_jax.errors import UserError

PRUNE = 'prune'
BARRIER_PRESETS = ('lmc', 'sgd_noise', 'psi_reset')  # the paper's comparisons (aws_jax.barrier)


class RunDir:
  """The paths of one run directory (absolute)."""

  OWNED = ('checkpoints', 'analyses', 'tensorboard', 'metrics.jsonl', 'results.json', 'config.json')

  def __init__(self, root: str):
    self.root = os.path.abspath(root)

  def _path(self, *parts) -> str:
    return os.path.join(self.root, *parts)

  @property
  def config(self) -> str:
    return self._path('config.json')

  @property
  def results(self) -> str:
    return self._path('results.json')

  @property
  def metrics(self) -> str:
    return self._path('metrics.jsonl')

  @property
  def tensorboard(self) -> str:
    return self._path('tensorboard')

  @property
  def lock(self) -> str:
    return self._path('.lock')


  @property
  def barriers(self) -> str:
    return self._path('barriers')

  @property
  def checkpoint_root(self) -> str:
    """Where every checkpoint of the run lies."""
    return self._path('checkpoints')

  @property
  def analyses(self) -> str:
    """Where every stored analysis of the run lies."""
    return self._path('analyses')

  def checkpoints(self, phase: str) -> str:
    """A phase's checkpoint directory: 'prune', 'rewind', or a final training's name (`final_name`)."""
    if phase in (PRUNE, 'rewind'):
      return self._path('checkpoints', phase)
    return os.path.join(self.final_root, phase)

  @property
  def final_root(self) -> str:
    """Where the final trainings' checkpoint directories lie."""
    return self._path('checkpoints', 'final')

  @property
  def finals(self) -> list[str]:
    """The names of the final trainings that have a directory, sorted."""
    return sorted(os.listdir(self.final_root)) if os.path.isdir(self.final_root) else []

  @staticmethod
  def final_name(start: str, source_round: int, seed: int) -> str:
    return f'{start}_round{source_round}_seed{seed}'

  def partial(self, label: str) -> str:
    """Checkpoints inside the phase `label` ('round 3', 'final signed_round8_seed2')."""
    return self._path('checkpoints', 'partial', label.replace(' ', '_'))

  def analyses_of(self, network: str) -> str:
    """The directory of `network`'s stored analyses ('round3', a final training's name, or 'pairs')."""
    return os.path.join(self.analyses, network)

  def analysis(self, network: str, name: str) -> str:
    """The analysis `name` of `network` ('round3' or a final training's name)."""
    return os.path.join(self.analyses_of(network), f'{name}.json')

  def relative(self, path: str) -> str:
    """`path` relative to the run directory where it lies inside it, else as given."""
    inside = os.path.abspath(path).startswith(os.path.join(self.root, ''))
    return os.path.relpath(path, self.root) if inside else path

  def check_writable(self) -> None:
    """Raises UserError unless the directory is, or can be made, one this process can write to."""
    if os.path.exists(self.root) and not os.path.isdir(self.root):
      raise UserError(f'--workdir={self.root} is a file, not a directory; give a directory (it is created if '
                      f'missing)')
    try:
      os.makedirs(self.root, exist_ok=True)
      probe = self._path(f'.aws_jax_write_test_{os.getpid()}')
      with open(probe, 'w'):
        pass
      os.remove(probe)
    except OSError as e:
      raise UserError(f'--workdir={self.root} cannot be written ({e.strerror}); choose a directory you can write '
                      f'to') from None

  def has_checkpoint(self) -> bool:
    """Whether any checkpoint was completed (orbax names finished steps by their number alone)."""
    for _, directories, _ in os.walk(self.checkpoint_root):
      if any(d.isdigit() for d in directories):
        return True
    return False

  def clear(self) -> None:
    """Removes everything a run wrote (not the lock, not barrier curves)."""
    for name in self.OWNED:
      target = self._path(name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)


class StudyDir:
  """The paths of one study directory (absolute): its files, its run directories, its variants' directories."""

  FILES = ('study.csv', 'study.md')

  def __init__(self, root: str):
    self.root = os.path.abspath(root)

  def _path(self, *parts) -> str:
    return os.path.join(self.root, *parts)

  @property
  def csv(self) -> str:
    return self._path('study.csv')

  @property
  def markdown(self) -> str:
    return self._path('study.md')

  @property
  def files_lock(self) -> str:
    """Held while a study writes its tables and figures (studies of one workdir take turns)."""
    return self._path('.study_files.lock')

  def figure(self, name: str) -> str:
    """A figure of the study ('starts.png', ...)."""
    return self._path(name)

  def log(self, pruning_seed: int) -> str:
    """The output of `pruning_seed`'s process under `study --parallel`."""
    return self._path(f'study_seed{pruning_seed}.log')

  @staticmethod
  def run_name(method: str, pruning_seed: int, default_seed: int) -> str:
    """A pruning run's directory name: the method, with `_seed<p>` for pruning seeds other than `default_seed`."""
    return method if pruning_seed == default_seed else f'{method}_seed{pruning_seed}'

  def run(self, name: str) -> RunDir:
    """The run directory `name` (`run_name`)."""
    return RunDir(self._path(name))

  def variant(self, name: str) -> 'StudyDir':
    """The study directory of a variant (`study.variants`)."""
    return StudyDir(self._path(name))

  @property
  def own(self) -> RunDir:
    """The study directory as a run directory, for its lock (`Lock`) and writability checks."""
    return RunDir(self.root)


def complete_steps(directory: str) -> list[int]:
  """The completed checkpoint steps in one checkpoint directory (orbax names a finished step by its number alone)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def parse_checkpoint(spec: str, workdir: str) -> tuple[str, int | None]:
  """'DIR[:STEP]' or 'DIR/STEP', DIR relative to `workdir` (or absolute) -> (directory, step; None: the latest)."""
  match = re.fullmatch(r'(.+?)(?::(\d+))?', spec)
  directory, step = os.path.abspath(os.path.join(workdir, match[1])), match[2]
  if step is None and os.path.basename(directory).isdigit():
    directory, step = os.path.split(directory)
  return directory, None if step is None else int(step)


def check_checkpoint(spec: str, workdir: str, to_make_it: str) -> None:
  """Raises UserError unless the checkpoint `spec` names (see `parse_checkpoint`) is complete: what is missing and
  `to_make_it`, what the user runs to make it. Reads directory names only, so it answers within a second."""
  directory, step = parse_checkpoint(spec, workdir)
  steps = complete_steps(directory)
  if not steps:
    state = 'holds no complete checkpoint' if os.path.isdir(directory) else 'does not exist'
    raise UserError(f'{directory} {state}, so the run in {workdir} has not got that far: {to_make_it}')
  if step is not None and step not in steps:
    raise UserError(f'{directory} has no checkpoint {step} (it has: {", ".join(map(str, steps))}); name one as '
                    f'DIR:STEP, or {to_make_it}')


def final_preset(preset: str, config, round_index: int, seeds) -> tuple[str, str, str, str]:
  """(a, b, name, label) of 'lmc' or 'sgd_noise': final-training checkpoints, relative to the run directory."""
  source = config_lib.source_round(config) if round_index < 0 else round_index
  seeds = list(seeds or config.final.seeds)

  def final(start, seed):
    return os.path.join('checkpoints', 'final', RunDir.final_name(start, source, seed))

  if preset == 'lmc':
    return (final('signed', seeds[0]), final('retrain', seeds[0]), f'lmc_round{source}_seed{seeds[0]}',
            f'signed vs retrain, round {source}')
  if len(seeds) < 2 or seeds[0] == seeds[1]:
    raise UserError(f'--preset=sgd_noise compares two seeds, got {seeds}: give --seeds=2,3 (final trainings '
                    f'of both, e.g. --config.final.seeds="(2,3)")')
  return (final('signed', seeds[0]), final('signed', seeds[1]), f'sgd_noise_round{source}_seeds{seeds[0]}-{seeds[1]}',
          f'signed, seeds {seeds[0]} vs {seeds[1]}, round {source}')


def check_same_config(rundir: RunDir, fingerprint: dict, overwrite: bool) -> list[str]:
  """The keys whose values differ from the run recorded in config.json (none where there is none;
  `config.changed_keys`); raises UserError if they differ, the directory holds checkpoints and `overwrite` is off."""
  if not os.path.exists(rundir.config):
    return []
  with open(rundir.config) as f:
    previous = json.load(f)
  changed = config_lib.changed_keys(previous, fingerprint)
  if changed and not overwrite and rundir.has_checkpoint():
    raise UserError(config_lib.refusal(rundir.root, previous, fingerprint, changed))
  return changed


class Lock:
  """A lock on a run directory while a command uses it, so that a second command on the same directory is refused on
  one line. Exclusive by default (main, barrier, signs export, plots); `shared` for studies, which run together on
  one workdir (`study --parallel`) but never beside another command. `wait`: wait for it instead of refusing;
  `path`: another lock file than the directory's own (a study's short hold while it writes its files)."""

  def __init__(self, rundir: RunDir, wait: bool = False, shared: bool = False, path: str | None = None,
               holder: str = ''):
    self.path = path or rundir.lock
    self.wait, self.shared = wait, shared
    self.holder = f'pid {os.getpid()}' + (f' ({holder})' if holder else '')
    self._file = None

  def _take(self, kind: int) -> bool:
    try:
      fcntl.flock(self._file, kind | (0 if self.wait else fcntl.LOCK_NB))
      return True
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      return False

  def __enter__(self):
    self._file = open(self.path, 'a+')  # pylint: disable=consider-using-with
    alone = self._take(fcntl.LOCK_EX) if not self.shared or not self.wait else False
    if alone:  # the only holder: the file names it alone
      self._file.truncate(0)
    if self.shared and (alone or self._take(fcntl.LOCK_SH)):
      if alone:
        fcntl.flock(self._file, fcntl.LOCK_SH)
    elif not alone:
      self._file.seek(0)
      holders = '; '.join(self._file.read().split('\n')).strip('; ') or 'another process'
      self._file.close()
      raise UserError(f'{os.path.dirname(self.path)} is in use by a running aws_jax process ({holders}); wait for '
                      f'it to end, or choose another --workdir') from None
    self._file.write(self.holder + '\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    self._file.close()  # closing releases the lock


@contextlib.contextmanager
def left_as_found(root: str, always: bool = False):
  """Removes what a command added to `root` (the directory too, if it made it) when it stops with an error before it
  wrote anything but its lock (a refused run: no dataset, a bad analysis name), so that the directory is as it was;
  a run that got further keeps what it wrote (its config and metrics show what went wrong). `always`: also when it
  succeeds (a probe)."""
  existed = os.path.isdir(root)
  before = set(os.listdir(root)) if existed else set()

  def restore():
    added = set(os.listdir(root)) - before if os.path.isdir(root) else set()
    if added <= {'.lock'}:
      for name in added:
        target = os.path.join(root, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        else:
          os.remove(target)
      if not existed and os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)

  try:
    yield
  except (UserError, SystemExit) as e:
    if not isinstance(e, SystemExit) or e.code not in (0, None):
      restore()
    raise
  if always:
    restore()
