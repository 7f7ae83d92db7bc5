"""A run directory: checked before anything heavy loads, and locked while a run uses it. No JAX here."""
import errno
import fcntl
import json
import os
import re

from aws_jax import config as config_lib
from aws_jax.errors import UserError

BARRIER_PRESETS = ('lmc', 'sgd_noise', 'psi_reset')  # the paper's comparisons (aws_jax.barrier)


def check_writable(workdir: str) -> None:
  """Raises UserError unless `workdir` is, or can be made, a directory this process can write to."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is a file, not a directory; give a directory (it is created if missing)')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.aws_jax_write_test_{os.getpid()}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f'--workdir={workdir} cannot be written ({e.strerror}); choose a directory you can write '
                    f'to') from None


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
  """(a, b, name, label) of 'lmc' or 'sgd_noise': final-training checkpoints, relative to the workdir."""
  source = config_lib.source_round(config) if round_index < 0 else round_index
  seeds = list(seeds or config.final.seeds)
  final = f'checkpoints/final/{{}}_round{source}_seed{{}}'
  if preset == 'lmc':
    return (final.format('signed', seeds[0]), final.format('retrain', seeds[0]), f'lmc_round{source}_seed{seeds[0]}',
            f'signed vs retrain, round {source}')
  if len(seeds) < 2 or seeds[0] == seeds[1]:
    raise UserError(f'--preset=sgd_noise compares two seeds, got {seeds}: give --seeds=2,3 (final trainings '
                    f'of both, e.g. --config.final.seeds="(2,3)")')
  return (final.format('signed', seeds[0]), final.format('signed', seeds[1]),
          f'sgd_noise_round{source}_seeds{seeds[0]}-{seeds[1]}',
          f'signed, seeds {seeds[0]} vs {seeds[1]}, round {source}')


def check_same_config(workdir: str, fingerprint: dict, overwrite: bool) -> list[str]:
  """The keys whose values differ from the run recorded in WORKDIR/config.json (none where there is none); raises
  UserError if they differ, the workdir holds checkpoints and `overwrite` is off."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    previous = json.load(f)
  changed = [k for k in sorted(set(previous) | set(fingerprint)) if previous.get(k) != fingerprint.get(k)]
  if changed and not overwrite and has_checkpoint(workdir):
    key = changed[0]
    raise UserError(f'{workdir} holds a run with {key}={previous.get(key)!r} (this config: '
                    f'{fingerprint.get(key)!r}); rerun with --config.overwrite=True to replace it, '
                    f'or choose another --workdir')
  return changed


def has_checkpoint(workdir: str) -> bool:
  """Whether any checkpoint under `workdir` was completed (orbax names finished steps by their number alone)."""
  for _, directories, _ in os.walk(os.path.join(workdir, 'checkpoints')):
    if any(d.isdigit() for d in directories):
      return True
  return False


class Lock:
  """An exclusive lock on a run directory while a run uses it: a second process is refused on one line."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._file = None

  def __enter__(self):
    self._file = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'{os.path.dirname(self.path)} is in use by a running aws_jax process ({holder}); wait for '
                      f'it to end, or choose another --workdir') from None
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()}')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    self._file.close()  # closing releases the lock
