"""What a run writes for people: per-epoch metrics (JSONL + TensorBoard), results.json and a summary table."""
import json
import os

import jax
import tensorboardX


def is_main_process() -> bool:
  """On several hosts, only process 0 writes files meant for people and prints."""
  return jax.process_index() == 0


def say(message: str) -> None:
  """Prints a progress line (process 0 only)."""
  if is_main_process():
    print(message, flush=True)


class MetricsLog:
  """Appends one JSON line per epoch to metrics.jsonl and the same scalars to TensorBoard event files."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard')) if is_main_process() else None

  def write(self, record: dict, global_epoch: int) -> None:
    if not self._tensorboard:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    phase = record['phase'].replace(' ', '_')  # tensorboardX would replace them, and log it each time
    for key, value in record.items():
      if isinstance(value, float):
        self._tensorboard.add_scalar(f'{phase}/{key}', value, global_epoch)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard:
      self._tensorboard.close()


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a kill leaves the old file or the new one, never half of one); process 0 only."""
  if not is_main_process():
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def format_table(results: dict) -> str:
  """The rounds and final trainings as a plain-text table (with the ψ-reset barrier where it was measured)."""
  lines = [f'{"stage":<24}{"% left":>8}{"train acc":>11}{"test acc":>10}{"ψ-reset barrier":>17}']

  def row(name, r):
    barrier = f'{r["psi_reset_barrier"]:>17.2f}' if 'psi_reset_barrier' in r else ''
    return (f'{name:<24}{100 * r["fraction_left"]:>8.2f}{100 * r["train_accuracy"]:>11.2f}'
            f'{100 * r["test_accuracy"]:>10.2f}{barrier}')

  for r in results['rounds']:
    lines.append(row('dense warm-up (round 0)' if r['round'] == 0 else f'pruning round {r["round"]}', r))
  for f in results['final']:
    lines.append(row(f'{f["mode"]} r{f["source_round"]} seed {f["seed"]}', f))
  return '\n'.join(lines)
