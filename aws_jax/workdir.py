"""A run directory: checked before anything heavy loads, and locked while a run uses it. No JAX here."""
import errno
import fcntl
import os

from aws_jax.errors import UserError


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
