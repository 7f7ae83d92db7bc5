"""What a run writes for people: per-epoch metrics (JSONL + TensorBoard), results.json and a summary table."""
import functools
import json
import os
import sys
import time

import jax

from aws_jax.rundir import RunDir


@functools.cache
def _tensorboardx():
  """tensorboardX, imported when a run first writes an event, without the `import torch` its writer makes where
  PyTorch is installed (2.5 s at every start) only to accept torch tensors, which aws_jax never gives it: `torch` is
  hidden from the import system for the duration of that one import (ImportError, which tensorboardX handles)."""
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
    from tensorboardX import event_file_writer  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    return tensorboardX, event_file_writer, event_pb2
  finally:
    if blocked:
      del sys.modules['torch']


def is_main_process() -> bool:
  """On several hosts, only process 0 writes files meant for people and prints."""
  return jax.process_index() == 0


def say(message: str) -> None:
  """Prints a progress line (process 0 only)."""
  if is_main_process():
    print(message, flush=True)


class MetricsLog:
  """One JSON line per (phase, epoch) in metrics.jsonl, and the same scalars in TensorBoard (a run per phase).

  A resumed run writes again the epochs it repeats: the line of an epoch already in the file is replaced in place,
  and each phase's event file starts with a purge at its first step, so TensorBoard hides the earlier attempt.
  Either way, a run interrupted and resumed any number of times reads like an uninterrupted one.
  """

  def __init__(self, rundir: RunDir):
    self.path = rundir.metrics
    self._tensorboard_dir = rundir.tensorboard
    self._lines = {}
    if is_main_process() and os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          if line.strip():
            record = json.loads(line)
            self._lines[(record['phase'], record['epoch'])] = line.rstrip('\n')
    self._phase, self._writer = None, None

  def write(self, record: dict, global_step: int) -> None:
    if not is_main_process():
      return
    key, line = (record['phase'], record['epoch']), json.dumps(record)
    repeated = key in self._lines
    self._lines[key] = line
    if repeated:
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.write(''.join(line + '\n' for line in self._lines.values()))
      os.replace(tmp, self.path)
    else:
      with open(self.path, 'a') as f:
        f.write(line + '\n')
    events = self._events(record['phase'], global_step)
    tensorboardx, _, event_pb2 = _tensorboardx()
    for name, value in record.items():
      if isinstance(value, float):
        events.write_event(event_pb2.Event(wall_time=time.time(), step=global_step,
                                           summary=tensorboardx.summary.scalar(name, value)))
    events.flush()

  def _events(self, phase: str, first_step: int):
    """The event file of `phase` for this attempt; it opens by hiding what earlier attempts logged from `first_step`
    on. Written synchronously (tensorboardX's SummaryWriter queues events in a thread: a kill would lose some)."""
    _, event_file_writer, event_pb2 = _tensorboardx()
    if phase != self._phase:
      self.close()
      directory = os.path.join(self._tensorboard_dir, phase.replace(' ', '_'))
      os.makedirs(directory, exist_ok=True)
      self._phase = phase
      self._writer = event_file_writer.EventsWriter(os.path.join(directory, 'events'), f'.{time.time_ns()}')
      self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=first_step, session_log=event_pb2.SessionLog(
          status=event_pb2.SessionLog.START)))
    return self._writer

  def close(self) -> None:
    if self._writer:
      self._writer.close()
      self._phase, self._writer = None, None


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a kill leaves the old file or the new one, never half of one); process 0 only."""
  if not is_main_process():
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def format_table(results: dict) -> str:
  """The rounds and final trainings as a plain-text table; test accuracy with BatchNorm statistics re-estimated
  at α = 0 ('recal. acc') and the ψ-reset barrier where they were measured."""
  lines = [f'{"stage":<28}{"% left":>8}{"train acc":>11}{"test acc":>10}{"recal. acc":>12}{"ψ-reset barrier":>17}']

  def row(name, r):
    recalibrated = f'{100 * r["recalibrated_test_accuracy"]:>12.2f}' if 'recalibrated_test_accuracy' in r else ' ' * 12
    barrier = f'{r["psi_reset_barrier"]:>17.2f}' if 'psi_reset_barrier' in r else ''
    return (f'{name:<28}{100 * r["fraction_left"]:>8.2f}{100 * r["train_accuracy"]:>11.2f}'
            f'{100 * r["test_accuracy"]:>10.2f}{recalibrated}{barrier}'.rstrip())

  for r in results['rounds']:
    lines.append(row('dense warm-up (round 0)' if r['round'] == 0 else f'pruning round {r["round"]}', r))
  for f in results['final']:
    source = '' if f['mode'] == 'dense' else f' r{f["source_round"]}'
    lines.append(row(f'{f["mode"]}{source} seed {f["seed"]}', f))
  return '\n'.join(lines)
