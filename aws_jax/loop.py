"""The one training loop: epochs over a population of S training states (S = 1, or S seeds vmapped together).

Each member of the population has its own data order, label, partial checkpoints and end-of-epoch hook; the loop
evaluates and logs each member after every epoch, checkpoints inside the phase every `checkpoint_every_steps` steps
and on SIGTERM / SIGINT, and resumes from a `Position` inside an epoch.
"""
import dataclasses
import math
import os
import shutil
import signal
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from aws_jax import preemption, reporting, timing, train
from aws_jax.checkpoints import Checkpoints
from aws_jax.engine import Setup
from aws_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a phase stands: `step` steps of `epoch` (0-based) done, with that epoch's running loss sum and count."""
  epoch: int
  step: int = 0
  loss_sum: float = 0.0
  correct: int = 0


class Partial:
  """Checkpoints inside one phase (a pruning round or a final training): every `checkpoint_every_steps` steps and
  on SIGTERM / SIGINT. The newest is kept; the phase's own checkpoint makes it obsolete (`discard`)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._checkpoints = None

  def _open(self) -> Checkpoints:
    if self._checkpoints is None:
      self._checkpoints = Checkpoints(self.directory, max_to_keep=1)
    return self._checkpoints

  def exists(self) -> bool:
    return os.path.isdir(self.directory)

  def save(self, global_step: int, state: train.TrainState, position: Position) -> None:
    self._open().save(global_step, state, dataclasses.asdict(position))

  def restore(self, template) -> tuple[train.TrainState, Position] | None:
    """The newest state saved inside the phase and where it stood, or None."""
    if not self.exists():
      return None
    checkpoints = self._open()
    step = checkpoints.latest()
    if step is None:
      return None
    return checkpoints.restore(step, template), Position(**checkpoints.summary(step))

  def discard(self) -> None:
    if self._checkpoints is not None:
      self._checkpoints.close()
      self._checkpoints = None
    if reporting.is_main_process() and self.exists():
      shutil.rmtree(self.directory)


@dataclasses.dataclass
class Member:
  """One training of a population: its data-order seed, its label (logs, metrics, progress) and, optionally, its
  partial checkpoints and what to do with its state after each epoch: `on_epoch_end(epochs done, state, metrics)`."""
  seed: int
  label: str
  partial: Partial | None = None
  on_epoch_end: Callable | None = None


def stop_requested(at_boundary: bool) -> int | None:
  """The stop signal to act on now. Several hosts agree on it at boundaries only (a collective), one host at once."""
  if jax.process_count() == 1:
    return preemption.requested()
  if not at_boundary:
    return None
  return int(np.max(multihost_utils.process_allgather(np.int32(preemption.requested() or 0)))) or None


def stop(signum: int, where: str) -> preemption.Stopped:
  return preemption.Stopped(signum, f'stopped by {signal.Signals(signum).name} {where} with a checkpoint written; '
                                    f'rerun the same command to resume')


@jax.jit
def stack(states: Sequence[train.TrainState]) -> train.TrainState:
  """States of the same shapes as one state with a leading population axis (one program, not one per leaf)."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


@jax.jit
def _member(state: train.TrainState, index) -> train.TrainState:
  return jax.tree.map(lambda x: x[index], state)


def member_state(state: train.TrainState, index: int, population: int) -> train.TrainState:
  """Member `index`'s state out of a population's state (the state itself for a population of one)."""
  return state if population == 1 else _member(state, index)


def train_epochs(setup: Setup, step_fn: Callable, states: Sequence[train.TrainState], members: Sequence[Member], *,
                 phase: int, epochs: range, log: reporting.MetricsLog, resume: Position | None = None,
                 timer: timing.Timer | None = None) -> tuple[list[train.TrainState], list[dict]]:
  """Trains every member over `epochs` (from `resume` inside its first epoch); returns their states and last
  epoch's metrics. `step_fn` takes the population's state: one state, or `stack(states)` for several members.

  Raises `preemption.Stopped` after saving partial checkpoints on SIGTERM / SIGINT, UserError if a loss turns NaN.
  `timer` counts the seconds of steps, evaluation and partial checkpoints.
  """
  timer = timer or timing.Timer()
  population = len(members)
  state = states[0] if population == 1 else stack(states)
  steps, every = setup.steps_per_epoch, setup.config.checkpoint_every_steps
  global_step = int(state.step if population == 1 else state.step[0])  # on the host from here: no round trip a step
  name = members[0].label if population == 1 else f'{members[0].label} and {population - 1} more seeds'
  metrics = [{} for _ in members]
  for epoch in epochs:
    position = resume if resume is not None and resume.epoch == epoch else Position(epoch)
    loss_sum, correct = position.loss_sum, position.correct
    bar = tqdm.tqdm(setup.population_inputs([m.seed for m in members], phase, epoch, start=position.step),
                    total=steps, initial=position.step, leave=False, unit='step',
                    desc=f'{name} epoch {epoch + 1}/{epochs.stop}',
                    disable=not (setup.config.progress and reporting.is_main_process()))
    with timer('train'):
      for done, inputs in enumerate(bar, position.step + 1):
        state, step_metrics = step_fn(state, *inputs)
        loss_sum += step_metrics['loss']
        correct += step_metrics['correct']
        global_step += 1
        periodic = every > 0 and global_step % every == 0
        signum = stop_requested(at_boundary=periodic or done == steps)
        if periodic or signum:
          with timer('checkpoint'):
            for k, member in enumerate(members):
              if member.partial is not None:
                member.partial.save(global_step, member_state(state, k, population),
                                    Position(epoch, done, _at(loss_sum, k, float), _at(correct, k, int)))
        if signum:
          raise stop(signum, f'in {name}, epoch {epoch + 1}, step {done}/{steps},')
      jax.block_until_ready(state)
    for k, member in enumerate(members):
      own = member_state(state, k, population)
      with timer('eval'):
        metrics[k] = epoch_metrics(setup, own, _at(loss_sum, k, float), _at(correct, k, int), label=member.label,
                                   epoch=epoch)
      log.write({'phase': member.label, 'epoch': epoch + 1, **metrics[k]}, global_step)
      if member.on_epoch_end:
        member.on_epoch_end(epoch + 1, own, metrics[k])
  return [member_state(state, k, population) for k in range(population)], metrics


def _at(total, index: int, kind):
  """Member `index`'s running total: an array over the population, or one member's scalar."""
  return kind(total[index] if np.ndim(total) else total)


def epoch_metrics(setup: Setup, state: train.TrainState, loss_sum: float, correct: int, *, label: str,
                  epoch: int) -> dict:
  """An epoch's training loss and accuracy from its running sums, and the test metrics; UserError if it diverged."""
  steps = setup.steps_per_epoch
  train_loss = loss_sum / steps
  if not math.isfinite(train_loss):
    raise UserError(f'the training loss became {train_loss} in {label}, epoch {epoch + 1}: the run diverged; '
                    f'lower --config.optimizer.lr (now {setup.config.optimizer.lr}) and rerun (a workdir '
                    f'with checkpoints needs --config.overwrite=True or another --workdir; nothing written is lost)')
  return {'train_loss': train_loss, 'train_accuracy': correct / (steps * setup.config.batch_size),
          **{f'test_{k}': v for k, v in setup.evaluate(state).items()}}
