"""The AWS protocol end to end: dense warm-up, pruning rounds, then final trainings from the signed mask.

`run(config, workdir)` is what `python -m aws_jax.main` calls. Every round and every final training is
checkpointed; rerunning the same command continues from the last complete checkpoint with the same results.
"""
import contextlib
import dataclasses
import functools
import itertools
import math
import os
import shutil
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from aws_jax import config as config_lib
from aws_jax import data as data_lib
from aws_jax import barrier, conv, models, preemption, pruning, reporting, sharding, train
from aws_jax import workdir as workdir_lib
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError

FINAL_PHASE = 1_000_000  # data-order phase of final trainings (pruning rounds use their round number)
START_KEY = 7  # folded into a final training's seed for the random draws of its start (random signs or mask)
WORKDIR_FILES = ('checkpoints', 'tensorboard', 'metrics.jsonl', 'results.json', 'config.json')  # what a run writes


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every phase of a run shares: the model, the data (device-resident or streamed) and the per-leaf rules."""
  config: ml_collections.ConfigDict
  model: Any
  dataset: data_lib.Dataset | data_lib.StreamedDataset
  train_images: jax.Array | None  # None when the dataset streams from disk (ImageNet)
  train_labels: jax.Array | None
  test_images: jax.Array | None
  test_labels: jax.Array | None
  is_norm: Any
  prunable: Any
  eval_step: Callable
  mesh: jax.sharding.Mesh

  def optimizer(self, schedule: str, epochs: int):
    opt = self.config.optimizer
    total_steps = max(epochs, 1) * self.steps_per_epoch
    return train.make_optimizer(opt.name, train.schedule(schedule, opt.lr, total_steps), opt.momentum,
                                opt.weight_decay)

  def state_shardings(self, tx):
    """Where each array of a training state with optimizer `tx` lives on the mesh."""
    abstract = jax.eval_shape(lambda: self._unplaced_state(0, tx))
    return sharding.state_shardings(self.mesh, abstract, self.config.mesh.fsdp > 1)

  @property
  def streamed(self) -> bool:
    return self.train_images is None

  @property
  def steps_per_epoch(self) -> int:
    return self.dataset.num_train // self.config.batch_size

  def train_step(self, tx, aws: bool) -> Callable:
    """The pure train step for this model and data (not compiled)."""
    make_step = train.make_batch_step if self.streamed else train.make_train_step
    return make_step(self.model, tx, aws=aws, is_norm=self.is_norm, augmentation=self.dataset.augmentation,
                     mean=self.dataset.mean, std=self.dataset.std, compute_dtype=self.config.compute_dtype)

  def jit_train_step(self, tx, aws: bool) -> Callable:
    """The train step compiled once for the mesh: state in place (donated), the batch split over devices.

    It takes `epoch_inputs`' tuples: (all images, all labels, batch indices), or a streamed (images, labels).
    """
    step = self.train_step(tx, aws)
    state_shardings, replicated = self.state_shardings(tx), sharding.replicated(self.mesh)
    batch = sharding.batch_sharding(self.mesh)
    inputs = (batch, batch) if self.streamed else (replicated, replicated, batch)
    return jax.jit(step, donate_argnums=0, in_shardings=(state_shardings, *inputs),
                   out_shardings=(state_shardings, replicated), compiler_options=conv.compiler_options())

  def epoch_inputs(self, seed: int, phase: int, epoch: int, start: int = 0):
    """The train step's inputs for steps `start`, `start` + 1, … of one epoch; a function of (seed, phase, epoch)."""
    batch_size = self.config.batch_size
    if self.streamed:
      batches = self.dataset.train_batches(batch_size, seed=seed, phase=phase, epoch=epoch,
                                           workers=self.config.data_workers, process=self._process)
      for images, labels in itertools.islice(batches, start, None):
        yield self.put_rows(images), self.put_rows(labels)
    else:
      for indices in train.epoch_order(seed, phase, epoch, self.dataset.num_train, batch_size)[start:]:
        yield self.train_images, self.train_labels, self.put_batch(indices)

  def _unplaced_state(self, seed: int, tx) -> train.TrainState:
    key = jax.random.PRNGKey(seed)
    init = jax.jit(train.init_variables, static_argnums=(0, 2))
    params, batch_stats = init(self.model, key, self.dataset.image_shape)
    init_params = jax.tree.map(jnp.copy, params)  # its own buffers: the step donates params
    return train.create_state(params, batch_stats, pruning.full_mask(params), init_params, tx,
                              jax.random.fold_in(key, 1))

  def fresh_state(self, seed: int, tx) -> train.TrainState:
    """A dense network initialised from `seed`, remembering its initial values, placed on the mesh."""
    return self.place(self._unplaced_state(seed, tx), tx)

  def place(self, state: train.TrainState, tx) -> train.TrainState:
    """`state` (with optimizer `tx`) moved to where the compiled step expects it."""
    return sharding.put_state(state, self.state_shardings(tx))

  def abstract_state(self, seed: int, tx):
    """Shapes, dtypes and shardings of a state: the target a checkpoint is restored into."""
    abstract = jax.eval_shape(lambda: self._unplaced_state(seed, tx))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                        self.state_shardings(tx))

  def put_batch(self, array) -> jax.Array:
    """One batch's host array (indices, weights), the same on every host, split over the devices."""
    return sharding.put(array, sharding.batch_sharding(self.mesh))

  def put_rows(self, rows) -> jax.Array:
    """This host's rows of a global batch, split over the devices."""
    return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), rows)

  @property
  def _process(self) -> tuple[int, int]:
    return jax.process_index(), jax.process_count()

  def evaluate(self, state: train.TrainState) -> dict:
    devices = self.mesh.size
    batch_size = -(-min(self.config.eval_batch_size, self.dataset.num_test) // devices) * devices
    if not self.streamed:
      return train.evaluate(self.eval_step, state.params, state.batch_stats, self.test_images, self.test_labels,
                            batch_size, put_batch=self.put_batch)
    totals = []
    for images, labels, valid in self.dataset.test_batches(batch_size, workers=self.config.data_workers,
                                                           process=self._process):
      rows = self.put_rows(np.arange(images.shape[0], dtype=np.int32) + jax.process_index() * images.shape[0])
      totals.append(self.eval_step(state.params, state.batch_stats, self.put_rows(images), self.put_rows(labels),
                                   rows, self.put_rows(valid)))
    loss, correct = np.sum(np.asarray(jax.device_get(totals)), axis=0)
    return {'loss': float(loss / self.dataset.num_test), 'accuracy': float(correct / self.dataset.num_test)}

  def recalibrator(self) -> Callable[[train.TrainState], dict]:
    """`recalibrate(state)`: test loss and accuracy with BatchNorm statistics re-estimated at α = 0 on training
    batches (`barrier.bn_batches` of them; one epoch if 0). Under AWS the running statistics were gathered under
    random α and can mislead; this measures the network that is evaluated and transferred."""
    count = self.config.barrier.bn_batches or -1
    batches = sharding.put(barrier.bn_batch_indices(self.dataset.num_train, self.config.batch_size, count),
                           sharding.replicated(self.mesh))
    reestimate = jax.jit(functools.partial(barrier.reestimate_batch_stats, self.model),
                         compiler_options=conv.compiler_options())

    def recalibrate(state: train.TrainState) -> dict:
      batch_stats = reestimate(state.params, state.batch_stats, self.train_images, batches, self.dataset.mean,
                               self.dataset.std)
      return self.evaluate(state.replace(batch_stats=batch_stats))

    return recalibrate

  def path_data(self) -> barrier.PathData:
    """What error barriers are measured on, as `config.barrier` says."""
    if self.streamed:
      raise UserError(f'error barriers need {self.config.dataset} in memory; run it with '
                      f'--config.barrier.psi_reset=False')
    return barrier.path_data(self.train_images, self.test_images, self.test_labels, self.dataset.mean,
                             self.dataset.std, batch_size=self.config.batch_size,
                             bn_batches=self.config.barrier.bn_batches, eval_batch_size=self.config.eval_batch_size)


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  dataset = data_lib.load(config.dataset, config.data_dir or None, config.download)
  if config.train_examples:
    dataset = data_lib.first_examples(dataset, config.train_examples)
  model = models.create_model(config.model, dataset.num_classes)
  params, _ = jax.eval_shape(lambda: train.init_variables(model, jax.random.PRNGKey(0), dataset.image_shape))
  if config.batch_size > dataset.num_train:
    raise UserError(f'--config.batch_size={config.batch_size} exceeds the {dataset.num_train} '
                    f'training examples of {config.dataset}')
  mesh = sharding.make_mesh(config.mesh.fsdp)
  if config.batch_size % mesh.size:
    raise UserError(f'--config.batch_size={config.batch_size} must be a multiple of the {mesh.size} devices')
  streamed = isinstance(dataset, data_lib.StreamedDataset)
  on_every_device = lambda array: None if streamed else sharding.put(array, sharding.replicated(mesh))
  eval_step = train.make_eval_step(model, dataset.mean, dataset.std, config.compute_dtype)
  return Setup(config=config, model=model, dataset=dataset,
               train_images=on_every_device(getattr(dataset, 'train_images', None)),
               train_labels=on_every_device(getattr(dataset, 'train_labels', None)),
               test_images=on_every_device(getattr(dataset, 'test_images', None)),
               test_labels=on_every_device(getattr(dataset, 'test_labels', None)),
               is_norm=pruning.norm_leaves(params), prunable=pruning.prunable_leaves(params, config.prune.exclude),
               eval_step=jax.jit(eval_step, out_shardings=sharding.replicated(mesh),
                                 compiler_options=conv.compiler_options()), mesh=mesh)


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

  def __init__(self, workdir: str, label: str):
    self.directory = os.path.join(workdir, 'checkpoints', 'partial', label.replace(' ', '_'))
    self._checkpoints = None

  def _open(self) -> Checkpoints:
    if self._checkpoints is None:
      self._checkpoints = Checkpoints(self.directory, max_to_keep=1)
    return self._checkpoints

  def save(self, global_step: int, state: train.TrainState, position: Position) -> None:
    self._open().save(global_step, state, dataclasses.asdict(position))

  def restore(self, template) -> tuple[train.TrainState, Position] | None:
    """The newest state saved inside the phase and where it stood, or None."""
    if not os.path.isdir(self.directory):
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
    if reporting.is_main_process() and os.path.isdir(self.directory):
      shutil.rmtree(self.directory)


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


def train_epochs(setup: Setup, step_fn: Callable, state: train.TrainState, *, seed: int, phase: int,
                 epochs: range, label: str, log: reporting.MetricsLog, on_epoch_end: Callable | None = None,
                 resume: Position | None = None, partial: Partial | None = None) -> tuple[train.TrainState, dict]:
  """Trains over `epochs` (from `resume` inside its first epoch), evaluating and logging after each epoch.

  With `partial`, saves inside the phase every `checkpoint_every_steps` steps, and on SIGTERM / SIGINT saves and
  raises `preemption.Stopped`. Raises UserError if the loss turns NaN.
  """
  steps, every = setup.steps_per_epoch, setup.config.checkpoint_every_steps
  global_step = int(state.step)  # counted on the host from here: no device round trip per step
  metrics = {}
  for epoch in epochs:
    position = resume if resume is not None and resume.epoch == epoch else Position(epoch)
    loss_sum, correct = position.loss_sum, position.correct
    bar = tqdm.tqdm(setup.epoch_inputs(seed, phase, epoch, start=position.step), total=steps,
                    initial=position.step, leave=False, unit='step', desc=f'{label} epoch {epoch + 1}/{epochs.stop}',
                    disable=not (setup.config.progress and reporting.is_main_process()))
    for done, inputs in enumerate(bar, position.step + 1):
      state, step_metrics = step_fn(state, *inputs)
      loss_sum += step_metrics['loss']
      correct += step_metrics['correct']
      global_step += 1
      periodic = every > 0 and global_step % every == 0
      signum = stop_requested(at_boundary=periodic or done == steps)
      if partial is not None and (periodic or signum):
        partial.save(global_step, state, Position(epoch, done, float(loss_sum), int(correct)))
      if signum:
        raise stop(signum, f'in {label}, epoch {epoch + 1}, step {done}/{steps},')
    metrics = epoch_metrics(setup, state, float(loss_sum), int(correct), label=label, epoch=epoch)
    log.write({'phase': label, 'epoch': epoch + 1, **metrics}, global_step)
    if on_epoch_end:
      on_epoch_end(epoch + 1, state, metrics)
  return state, metrics


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


def pruning_stage(setup: Setup, workdir: str, log: reporting.MetricsLog) -> None:
  """Round 0 (dense warm-up), then the method's rounds of prune (+ rewind) + train; resumes where it stopped."""
  config = setup.config
  recipe = config_lib.recipe(config.method)
  tx = setup.optimizer('constant', config.prune.round_epochs)
  step_fn = setup.jit_train_step(tx, aws=recipe.interpolate)
  checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints', 'prune'))
  template = setup.abstract_state(config.seed, tx)
  done = checkpoints.latest()
  state = setup.fresh_state(config.seed, tx) if done is None else checkpoints.restore(done, template)
  first, last = (0 if done is None else done + 1), config_lib.last_round(config)
  path_data = setup.path_data() if config.barrier.psi_reset else None
  recalibrate = None if setup.streamed else setup.recalibrator()
  rewind = Checkpoints(os.path.join(workdir, 'checkpoints', 'rewind')) if recipe.rewind == 'warmup' else None
  if done is not None and first <= last:
    reporting.say(f'resuming after pruning round {done} from {checkpoints.directory}')
  for round_index in range(first, last + 1):
    start = time.time()
    label = f'round {round_index}'
    partial = Partial(workdir, label)
    resumed = partial.restore(template)
    if resumed is not None:
      previous = state if round_index == 0 else checkpoints.restore(round_index - 1, template)
      previous_signs = pruning.signs(previous.params, previous.mask)
      state, position = resumed
      reporting.say(f'resuming {label} at epoch {position.epoch + 1}, step {position.step}')
    else:
      previous_signs, position = pruning.signs(state.params, state.mask), None
      if round_index > 0:
        state = prune_and_rewind(setup, state, round_index, tx, rewind_target(setup, recipe, rewind, template))
    epochs = config_lib.round_epochs(config, round_index)

    def keep_rewind_point(epoch, state, metrics):
      del metrics
      if rewind is not None and round_index == 0 and epoch == config.prune.rewind_epoch:
        rewind.save(epoch, state, {'epoch': epoch})

    if rewind is not None and round_index == 0 and config.prune.rewind_epoch == 0 and position is None:
      rewind.save(0, state, {'epoch': 0})
    state, metrics = train_epochs(setup, step_fn, state, seed=config.seed, phase=round_index,
                                  epochs=range(position.epoch if position else 0, epochs), label=label, log=log,
                                  resume=position, partial=partial, on_epoch_end=keep_rewind_point)
    if not metrics:
      metrics = {'train_loss': float('nan'), 'train_accuracy': float('nan'), **{
          f'test_{k}': v for k, v in setup.evaluate(state).items()}}
    recalibrated = {f'recalibrated_test_{k}': v for k, v in recalibrate(state).items()} if recalibrate else {}
    psi_reset = psi_reset_summary(setup, state, path_data) if path_data else {}
    summary = {'round': round_index, 'method': config.method,
               'fraction_left': pruning.sparsity_summary(state.mask, setup.prunable)['fraction_left'],
               **metrics, **recalibrated, **psi_reset, **sign_summary(setup, state, previous_signs),
               'epochs': epochs, 'wall_s': round(time.time() - start, 2)}
    checkpoints.save(round_index, state, summary)
    partial.discard()
    reporting.say(round_line(summary))
    signum = stop_requested(at_boundary=True)
    if signum and round_index < last:
      raise stop(signum, f'after {label}')
  checkpoints.close()
  if rewind is not None:
    rewind.close()


def round_line(summary: dict) -> str:
  """A pruning round as the one line a run prints for it."""
  parts = [f'round {summary["round"]:2d}', f'{100 * summary["fraction_left"]:6.2f}% left',
           f'train acc {100 * summary["train_accuracy"]:6.2f}', f'test acc {100 * summary["test_accuracy"]:6.2f}']
  if 'recalibrated_test_accuracy' in summary:
    parts.append(f'recalibrated {100 * summary["recalibrated_test_accuracy"]:6.2f}')
  if 'psi_reset_barrier' in summary:
    parts.append(f'ψ-reset barrier {summary["psi_reset_barrier"]:5.2f}')
  parts.append(f'signs changed {100 * summary["signs_changed_from_init"]:5.2f}%')
  return ' | '.join(parts) + f' | {summary["wall_s"]:.1f}s'


def sign_summary(setup: Setup, state: train.TrainState, previous_signs) -> dict:
  """How the surviving prunable weights' signs moved: since initialisation and since the previous round."""
  since_init = pruning.sign_changes(state.init_params, state.params, state.mask, setup.prunable)
  alive_before = jax.tree.map(lambda s, m: jnp.where(m, s, 0).astype(s.dtype), previous_signs, state.mask)
  since_previous = pruning.sign_flips(alive_before, state.params, setup.prunable)
  return {'signs_changed_from_init': since_init['overall'],
          'signs_changed_from_previous': since_previous['overall'],
          'signs_changed_layers': {layer: {'from_init': change, 'from_previous': since_previous['layers'][layer]}
                                   for layer, change in since_init['layers'].items()}}


def rewind_target(setup: Setup, recipe: config_lib.Recipe, rewind: Checkpoints | None, template):
  """The state whose weights a pruning rewinds to: None (LR rewinding), the initial state, or a warm-up epoch's."""
  if recipe.rewind == 'init':
    return setup.fresh_state(setup.config.seed, setup.optimizer('constant', setup.config.prune.round_epochs))
  if recipe.rewind == 'warmup':
    return rewind.restore(setup.config.prune.rewind_epoch, template)
  return None


def prune_and_rewind(setup: Setup, state: train.TrainState, round_index: int, tx, target) -> train.TrainState:
  """One pruning of the method: a new mask (magnitude or random, global or per layer), weights kept or rewound to
  `target`'s (with its BatchNorm statistics), a fresh optimizer."""
  config = setup.config
  recipe = config_lib.recipe(config.method)
  fraction, scope = config_lib.round_fraction(config), config.prune.scope
  if recipe.criterion == 'random':
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), round_index)
    mask = pruning.prune_random(key, state.mask, setup.prunable, fraction, scope)
  else:
    scores = jax.tree.map(jnp.abs, state.params)
    mask = pruning.prune_by_score(scores, state.mask, setup.prunable, fraction, scope)
  source = state if target is None else target
  params = pruning.apply_mask(source.params, mask)
  batch_stats = jax.tree.map(jnp.copy, source.batch_stats)
  return setup.place(state.replace(params=params, batch_stats=batch_stats, mask=mask, opt_state=tx.init(params)), tx)


def psi_reset_summary(setup: Setup, state: train.TrainState, path_data: barrier.PathData) -> dict:
  """The error barrier (points of test error) between `state` and itself with ψ reset; the curve and error along α."""
  curve = barrier.psi_reset_curve(setup.model, state, setup.is_norm, path_data, setup.config.barrier.points,
                                  setup.config.barrier.chunk)
  return {'psi_reset_barrier': curve['barrier'], 'psi_reset_curve': curve['curve'],
          'psi_reset_test_error': curve['test_error']}


def prune(params, mask, prunable, fraction: float):
  """One round's global magnitude pruning; the new mask is applied to the weights."""
  new_mask = pruning.prune_global_magnitude(params, mask, prunable, fraction)
  return pruning.apply_mask(params, new_mask), new_mask


def start_final(setup: Setup, mode: str, signed, seed: int, tx, source: train.TrainState | None = None
                ) -> train.TrainState:
  """The network a final training starts from, given the source's signed mask `signed` (docs/method.md, "Stage 2").

  signed: |w_fresh| · s; random_signs: the same with random ±1 for s; mask: the fresh weights on s ≠ 0;
  random_mask: the fresh weights on a random mask with the same per-layer counts; dense: the fresh network;
  retrain: `source`, the trained sparse network itself.
  """
  fresh = setup.fresh_state(seed, tx)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), START_KEY)
  mask = pruning.mask_from_signs(signed)
  if mode == 'dense':
    return fresh
  if mode == 'retrain':  # copied: the step donates its state
    source = jax.tree.map(jnp.copy, source)
    return setup.place(fresh.replace(params=source.params, batch_stats=source.batch_stats, mask=source.mask,
                                     init_params=source.init_params, opt_state=tx.init(source.params)), tx)
  if mode in ('signed', 'random_signs'):
    if mode == 'random_signs':
      signed = pruning.random_signs(key, signed, setup.is_norm)
    params = pruning.signed_mask_transfer(fresh.params, signed, setup.is_norm)
  else:
    if mode == 'random_mask':
      mask = pruning.random_mask_like(key, mask, setup.prunable)
    params = pruning.apply_mask(fresh.params, mask)
  return setup.place(fresh.replace(params=params, mask=mask, opt_state=tx.init(params)), tx)


def final_stage(setup: Setup, workdir: str, log: reporting.MetricsLog) -> None:
  """One final training per (seed, mode) from the source round (or a signs file); each resumes on its own.

  With `final.seeds_at_once` (on accelerators by default), the seeds of one start train together, vmapped.
  """
  config = setup.config
  source, signed, source_round = final_source(setup, workdir)
  tx = setup.optimizer(config.final.schedule, config.final.epochs)
  step_fn = setup.jit_train_step(tx, aws=False)
  together = seeds_together(setup)
  runs = ([(None, mode) for mode in config.final.modes] if together else
          [(seed, mode) for seed in config.final.seeds for mode in config.final.modes])
  for index, (seed, mode) in enumerate(runs):
    if seed is None:
      summaries = final_runs_vmapped(setup, tx, source, signed, source_round, mode, workdir, log)
    else:
      summaries = [final_run(setup, step_fn, tx, source, signed, source_round, mode, seed, workdir, log)]
    for summary in summaries:
      reporting.say(f'final {mode:12s} from round {source_round} seed {summary["seed"]} | '
                    f'{100 * summary["fraction_left"]:6.2f}% left | test acc {100 * summary["test_accuracy"]:6.2f} | '
                    f'signs flipped {100 * summary["signs_flipped_since_start"]:5.2f}% | {summary["wall_s"]:.1f}s')
    signum = stop_requested(at_boundary=True)
    if signum and index < len(runs) - 1:
      raise stop(signum, f'after final {mode}' + (f' seed {seed}' if seed is not None else ''))


def seeds_together(setup: Setup) -> bool:
  """Whether the final seeds train vmapped: `final.seeds_at_once`, where one device holds the data in memory."""
  choice = setup.config.final.seeds_at_once
  if choice == 'auto':
    choice = 'sequential' if jax.default_backend() == 'cpu' else 'vmap'
  return choice == 'vmap' and len(setup.config.final.seeds) > 1 and setup.mesh.size == 1 and not setup.streamed


def final_source(setup: Setup, workdir: str) -> tuple[train.TrainState | None, Any, int]:
  """What final trainings start from: the source round's state (None from a signs file), its signed mask, the round."""
  config = setup.config
  if config.final.signed_mask:
    from aws_jax import signs as signs_lib  # pylint: disable=import-outside-toplevel
    signed, metadata = signs_lib.load(config.final.signed_mask)
    params = jax.eval_shape(lambda: train.init_variables(setup.model, jax.random.PRNGKey(0),
                                                          setup.dataset.image_shape))[0]
    signs_lib.check_fits(signed, metadata, params=params, model=config.model, source=config.final.signed_mask)
    return None, signed, -1 if metadata['round'] is None else int(metadata['round'])  # -1: a file of no round
  source_round = config_lib.source_round(config)
  prune_checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints', 'prune'))
  if source_round not in prune_checkpoints.steps():
    raise UserError(f'pruning round {source_round} was never reached in {workdir} (last complete round: '
                    f'{prune_checkpoints.latest()}); run the pruning stage first (--config.stage=prune or all)')
  prune_tx = setup.optimizer('constant', config.prune.round_epochs)
  source = prune_checkpoints.restore(source_round, setup.abstract_state(config.seed, prune_tx))
  prune_checkpoints.close()
  return source, pruning.signs(source.params, source.mask), source_round


def final_run(setup: Setup, step_fn: Callable, tx, source: train.TrainState | None, signed, source_round: int,
              mode: str, seed: int, workdir: str, log: reporting.MetricsLog) -> dict:
  """Trains one final network (or resumes it) and returns the summary saved with its last checkpoint."""
  config = setup.config
  label = f'final {final_name(mode, source_round, seed)}'
  checkpoints = final_checkpoints(workdir, mode, source_round, seed)
  done = checkpoints.latest() or 0
  if done < config.final.epochs:
    start = time.time()
    template = setup.abstract_state(seed, tx)
    state = start_final(setup, mode, signed, seed, tx, source)
    start_signs = pruning.signs(state.params, state.mask)
    partial = Partial(workdir, label)
    resumed = partial.restore(template)
    position = None
    if resumed is not None and resumed[1].epoch >= done:
      state, position = resumed
    elif done > 0:
      state = checkpoints.restore(done, template)

    def save(epoch, state, metrics):
      save_final(setup, checkpoints, epoch, state, metrics, mode=mode, source_round=source_round, seed=seed,
                 start_signs=start_signs, wall_s=time.time() - start)

    train_epochs(setup, step_fn, state, seed=seed, phase=FINAL_PHASE,
                 epochs=range(position.epoch if position else done, config.final.epochs), label=label, log=log,
                 on_epoch_end=save, resume=position, partial=partial)
    partial.discard()
  summary = checkpoints.summary(checkpoints.latest())
  checkpoints.close()
  return summary


def final_name(mode: str, source_round: int, seed: int) -> str:
  return f'{mode}_round{source_round}_seed{seed}'


def final_checkpoints(workdir: str, mode: str, source_round: int, seed: int) -> Checkpoints:
  return Checkpoints(os.path.join(workdir, 'checkpoints', 'final', final_name(mode, source_round, seed)), max_to_keep=1)


def save_final(setup: Setup, checkpoints: Checkpoints, epoch: int, state: train.TrainState, metrics: dict, *,
               mode: str, source_round: int, seed: int, start_signs, wall_s: float) -> None:
  """A final training's checkpoint every `checkpoint_every_epochs` epochs and at its end. Its summary records the
  fraction of the start's signs (alive, non-normalization weights) that training has flipped: for a signed start,
  the inherited signs."""
  config = setup.config
  if epoch % config.checkpoint_every_epochs and epoch != config.final.epochs:
    return
  carries_signs = jax.tree.map(lambda norm: not norm, setup.is_norm)
  summary = {'mode': mode, 'source_round': source_round, 'seed': seed,
             'fraction_left': pruning.sparsity_summary(state.mask, setup.prunable)['fraction_left'], **metrics,
             'signs_flipped_since_start': pruning.sign_flips(start_signs, state.params, carries_signs)['overall'],
             'epochs': epoch, 'wall_s': round(wall_s, 2)}
  checkpoints.save(epoch, state, summary)


def final_runs_vmapped(setup: Setup, tx, source: train.TrainState | None, signed, source_round: int, mode: str,
                       workdir: str, log: reporting.MetricsLog) -> list[dict]:
  """The final trainings of every seed of one start as one vmapped program: per step, each seed takes its own batch
  (its own data order) and its own α-free update. Checkpoints, partial checkpoints and metrics are written per seed,
  as `final_run` writes them, so either path resumes the other's. Seeds at different epochs, or an interrupted
  vmapped training, continue one by one."""
  config = setup.config
  seeds = list(config.final.seeds)
  checkpoints = {seed: final_checkpoints(workdir, mode, source_round, seed) for seed in seeds}
  done = {seed: checkpoints[seed].latest() or 0 for seed in seeds}
  pending = [seed for seed in seeds if done[seed] < config.final.epochs]
  labels = {seed: f'final {final_name(mode, source_round, seed)}' for seed in seeds}
  partials = {seed: Partial(workdir, labels[seed]) for seed in pending}
  if len({done[seed] for seed in pending}) > 1 or any(os.path.isdir(p.directory) for p in partials.values()):
    step_fn = setup.jit_train_step(tx, aws=False)
    return [final_run(setup, step_fn, tx, source, signed, source_round, mode, seed, workdir, log) for seed in seeds]
  start = time.time()
  states = {seed: start_final(setup, mode, signed, seed, tx, source) for seed in pending}
  start_signs = {seed: pruning.signs(state.params, state.mask) for seed, state in states.items()}
  for seed in pending:
    if done[seed]:
      states[seed] = checkpoints[seed].restore(done[seed], setup.abstract_state(seed, tx))
  if pending:
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[states[seed] for seed in pending])
    step_fn = jax.jit(jax.vmap(setup.train_step(tx, aws=False), in_axes=(0, None, None, 0)), donate_argnums=0,
                      compiler_options=conv.compiler_options())
    steps, every = setup.steps_per_epoch, config.checkpoint_every_steps
    global_step = int(stacked.step[0])
    for epoch in range(done[pending[0]], config.final.epochs):
      orders = np.stack([train.epoch_order(seed, FINAL_PHASE, epoch, setup.dataset.num_train, config.batch_size)
                         for seed in pending])
      loss_sum, correct = 0.0, 0
      for step in tqdm.trange(steps, leave=False, unit='step', desc=f'final {mode} seeds {pending} epoch {epoch + 1}',
                              disable=not (config.progress and reporting.is_main_process())):
        stacked, metrics = step_fn(stacked, setup.train_images, setup.train_labels, jnp.asarray(orders[:, step]))
        loss_sum, correct, global_step = loss_sum + metrics['loss'], correct + metrics['correct'], global_step + 1
        periodic = every > 0 and global_step % every == 0
        signum = stop_requested(at_boundary=periodic or step + 1 == steps)
        if periodic or signum:
          for k, seed in enumerate(pending):
            partials[seed].save(global_step, jax.tree.map(lambda x, k=k: x[k], stacked),
                                Position(epoch, step + 1, float(loss_sum[k]), int(correct[k])))
        if signum:
          raise stop(signum, f'in final {mode} (seeds {pending} together), epoch {epoch + 1}, step {step + 1}/{steps},')
      for k, seed in enumerate(pending):
        state = jax.tree.map(lambda x, k=k: x[k], stacked)
        metrics = epoch_metrics(setup, state, float(loss_sum[k]), int(correct[k]), label=labels[seed], epoch=epoch)
        log.write({'phase': labels[seed], 'epoch': epoch + 1, **metrics}, global_step)
        save_final(setup, checkpoints[seed], epoch + 1, state, metrics, mode=mode, source_round=source_round,
                   seed=seed, start_signs=start_signs[seed], wall_s=time.time() - start)
    for partial in partials.values():
      partial.discard()
  summaries = [checkpoints[seed].summary(checkpoints[seed].latest()) for seed in seeds]
  for c in checkpoints.values():
    c.close()
  return summaries


def saved_summaries(directory: str) -> list[dict]:
  """The summaries of every checkpoint in `directory`, oldest first."""
  checkpoints = Checkpoints(directory)
  summaries = [checkpoints.summary(step) for step in checkpoints.steps()]
  checkpoints.close()
  return summaries


def collect_results(workdir: str, final_epochs: int) -> dict:
  """results.json's content from the checkpoints on disk: every saved round, every finished final training."""
  final_root = os.path.join(workdir, 'checkpoints', 'final')
  names = sorted(os.listdir(final_root)) if os.path.isdir(final_root) else []
  final = [s[-1] for s in (saved_summaries(os.path.join(final_root, n)) for n in names)
           if s and s[-1]['epochs'] == final_epochs]
  final.sort(key=lambda s: (s['source_round'], s['seed'], config_lib.MODES.index(s['mode'])))
  return {'rounds': saved_summaries(os.path.join(workdir, 'checkpoints', 'prune')), 'final': final}


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir holding checkpoints of another config unless told to overwrite; records this config.

  A workdir whose run never completed a checkpoint holds nothing to lose: it is simply taken over.
  """
  workdir_lib.check_writable(workdir)
  path = os.path.join(workdir, 'config.json')
  fingerprint = config_lib.fingerprint(config)
  if os.path.exists(path):
    changed = workdir_lib.check_same_config(workdir, fingerprint, config.overwrite)
    if changed and reporting.is_main_process():
      for name in WORKDIR_FILES:
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
  reporting.write_json(path, fingerprint)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('aws_jax workdir prepared')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stages `config.stage` asks for in `workdir`; returns (and writes) results.json's content.

  Holds the workdir's lock throughout (process 0). SIGTERM / SIGINT stop it after the current step with a checkpoint
  written (`preemption.Stopped`); calling it again resumes.
  """
  config_lib.validate(config)
  workdir_lib.check_writable(workdir)
  with workdir_lib.Lock(workdir) if reporting.is_main_process() else contextlib.nullcontext(), \
      preemption.handling_signals():
    prepare_workdir(config, workdir)
    setup = make_setup(config)
    log = reporting.MetricsLog(workdir)
    try:
      if config.stage in ('all', 'prune'):
        pruning_stage(setup, workdir, log)
        reporting.write_json(os.path.join(workdir, 'results.json'), collect_results(workdir, config.final.epochs))
      if config.stage in ('all', 'final'):
        final_stage(setup, workdir, log)
    finally:
      log.close()
    results = collect_results(workdir, config.final.epochs)
    reporting.write_json(os.path.join(workdir, 'results.json'), results)
  reporting.say(reporting.format_table(results))
  return results
