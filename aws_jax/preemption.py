"""SIGTERM and SIGINT as a request to stop cleanly: finish the step, write a checkpoint, say how to resume.

Colab, preemptible TPU VMs and Slurm send SIGTERM some seconds before they stop a job. While `handling_signals()`
is active, the first such signal only sets a flag, which the training loop checks after every step; a second one acts
as it would have (Ctrl-C twice interrupts at once).
"""
import contextlib
import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []


class Stopped(Exception):
  """The run stopped on a signal after writing a checkpoint; `signum` is that signal."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


def requested() -> int | None:
  """The signal received since `handling_signals()` began, if any."""
  return _requested[0] if _requested else None


@contextlib.contextmanager
def handling_signals():
  """Turns SIGTERM / SIGINT into `requested()` for the duration (main thread only; elsewhere a no-op)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in _SIGNALS}

  def restore():
    for s, handler in previous.items():
      signal.signal(s, handler)

  def on_signal(signum, frame):
    del frame
    _requested.append(signum)
    restore()

  _requested.clear()
  for s in _SIGNALS:
    signal.signal(s, on_signal)
  try:
    yield
  finally:
    restore()
    _requested.clear()
