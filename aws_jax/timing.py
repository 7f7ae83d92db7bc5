"""Where a phase's seconds go: training steps, evaluation, BatchNorm re-estimation, barriers, checkpointing, and
compilation (XLA's own compile events, taken out of whichever category was running)."""
import collections
import contextlib
import time

import jax

CATEGORIES = ('train', 'eval', 'reestimate', 'barrier', 'checkpoint', 'compile')
_compiled_seconds = [0.0]


def _on_event(event: str, seconds: float, **kwargs) -> None:
  del kwargs
  if event == '/jax/core/compile/backend_compile_duration':
    _compiled_seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_event)


class Timer:
  """Seconds per category; `with timer('train'): ...` adds the block's time, less compilation and less the blocks
  nested inside it (which count for their own categories)."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self._inner = []  # per open block: [seconds, compile seconds] of the blocks nested in it

  @contextlib.contextmanager
  def __call__(self, category: str):
    start, compiled = time.perf_counter(), _compiled_seconds[0]
    self._inner.append([0.0, 0.0])
    try:
      yield
    finally:
      inner_seconds, inner_compiling = self._inner.pop()
      elapsed, compiling = time.perf_counter() - start, _compiled_seconds[0] - compiled
      self.seconds['compile'] += compiling - inner_compiling
      self.seconds[category] += (elapsed - inner_seconds) - (compiling - inner_compiling)
      if self._inner:
        self._inner[-1][0] += elapsed
        self._inner[-1][1] += compiling

  def fields(self, share: float = 1.0) -> dict:
    """{'time_<category>_s': seconds × `share`} for the categories that took any time."""
    return {f'time_{name}_s': round(self.seconds[name] * share, 3) for name in CATEGORIES if self.seconds[name]}


def total(record: dict) -> float:
  """The seconds of a record's time account."""
  return sum(record.get(f'time_{name}_s', 0.0) for name in CATEGORIES)


def is_time_field(key: str) -> bool:
  return key.startswith('time_') and key.endswith('_s')


def merged(*records) -> dict:
  """The records' fields in one dict, a later record's winning, except time fields (`time_*_s`), which are summed:
  a network's checkpointed summary and its analyses each account for their own seconds."""
  out = {}
  for record in records:
    for key, value in record.items():
      out[key] = out.get(key, 0.0) + value if is_time_field(key) else value
  return out
