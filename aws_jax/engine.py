"""What every stage of a run shares, built once per config: the model, the data, the mesh, compiled steps.

`make_setup(config)` loads the data and builds the model; `Setup.step` compiles a train step once per distinct
(schedule, epochs, AWS or not, seeds at once) and hands the same compiled function to every later caller, so a
study's methods, rounds and starts share their compilations. The data's `data.Source` says what the steps read:
the arrays it keeps on the devices, and each batch's rows.
"""
import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from aws_jax import conv, models, pruning, sharding, train
from aws_jax import data as data_lib
from aws_jax.errors import UserError


TRAIN_INPUTS = 3  # what a train step reads after its state: images, labels, indices (train.make_train_step)


@dataclasses.dataclass(frozen=True)
class Setup:
  """The model, the data and what of it stays on the devices, the per-leaf rules and the mesh of one config."""
  config: ml_collections.ConfigDict
  model: Any
  dataset: data_lib.Source
  resident: dict[str, tuple[jax.Array, ...]]  # per split, `dataset.resident(split)` on every device
  is_norm: Any
  prunable: Any
  eval_step: Callable
  mesh: jax.sharding.Mesh
  _built: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def with_config(self, config: ml_collections.ConfigDict) -> 'Setup':
    """This setup under `config`, which differs from its own only in what the data, the model and the compiled
    functions do not depend on (the seed, the method, the final seeds): those are shared."""
    return dataclasses.replace(self, config=config)

  @property
  def in_memory(self) -> bool:
    """Whether the data is held in memory (error barriers and BatchNorm re-estimation read it there)."""
    return self.dataset.in_memory

  @property
  def streamed(self) -> bool:
    return not self.dataset.in_memory

  # The in-memory splits on every device (what the analyses read); None when the data streams.
  @property
  def train_images(self) -> jax.Array | None:
    return self._in_memory_split('train')[0]

  @property
  def train_labels(self) -> jax.Array | None:
    return self._in_memory_split('train')[1]

  @property
  def test_images(self) -> jax.Array | None:
    return self._in_memory_split('test')[0]

  @property
  def test_labels(self) -> jax.Array | None:
    return self._in_memory_split('test')[1]

  def _in_memory_split(self, split: str) -> tuple:
    return self.resident[split] or (None, None)

  @property
  def steps_per_epoch(self) -> int:
    return self.dataset.num_train // self.config.batch_size

  def built(self, key, build: Callable):
    """`build()`, called once per `key` for this setup (compiled functions, optimizers, barrier data)."""
    if key not in self._built:
      self._built[key] = build()
    return self._built[key]

  def optimizer(self, schedule: str, epochs: int):
    """SGD or Adam as `config.optimizer` says, over `epochs` epochs of `schedule`; one object per (schedule, epochs)."""
    opt = self.config.optimizer
    decayed = None if opt.norm_weight_decay else jax.tree.map(lambda norm: not norm, self.is_norm)
    return self.built(('optimizer', schedule, epochs, *opt.items()), lambda: train.make_optimizer(
        opt.name, train.schedule(schedule, opt.lr, max(epochs, 1) * self.steps_per_epoch), opt.momentum,
        opt.weight_decay, decayed))

  def train_step(self, tx, aws: bool) -> Callable:
    """The pure train step `step(state, images, labels, indices)` for this model and data (not compiled), traced
    with the convolutions `config.conv`."""
    return conv.using(self.config.conv, train.make_train_step(
        self.model, tx, aws=aws, is_norm=self.is_norm, augmentation=self.dataset.augmentation,
        mean=self.dataset.mean, std=self.dataset.std, compute_dtype=self.config.compute_dtype))

  def step(self, schedule: str, epochs: int, aws: bool, seeds: int = 1) -> Callable:
    """The train step compiled for the mesh, state donated: one seed's state, or `seeds` states stacked (vmapped,
    each with its own batch). Compiled once per distinct arguments; `population_inputs` feeds it."""
    key = ('step', schedule, epochs, aws, seeds, *self.config.optimizer.items())
    return self.built(key, lambda: self._compile_step(schedule, epochs, aws, seeds))

  def _compile_step(self, schedule: str, epochs: int, aws: bool, seeds: int) -> Callable:
    tx = self.optimizer(schedule, epochs)
    step = self.train_step(tx, aws)
    if seeds > 1:
      return jax.jit(jax.vmap(step, in_axes=(0, *self._per_input(None, 0))), donate_argnums=0,
                     compiler_options=conv.compiler_options())
    state_shardings, replicated = self.state_shardings(tx), sharding.replicated(self.mesh)
    inputs = self._per_input(replicated, sharding.batch_sharding(self.mesh))
    return jax.jit(step, donate_argnums=0, in_shardings=(state_shardings, *inputs),
                   out_shardings=(state_shardings, replicated), compiler_options=conv.compiler_options())

  def _per_input(self, resident, batch) -> tuple:
    """One of `resident` or `batch` per train-step input: `resident` for those the data keeps on the devices."""
    kept = len(self.resident['train'])
    return (resident,) * kept + (batch,) * (TRAIN_INPUTS - kept)

  def state_shardings(self, tx):
    """Where each array of a training state with optimizer `tx` lives on the mesh."""
    return self.built(('state_shardings', tx), lambda: sharding.state_shardings(
        self.mesh, self._state_shapes(tx), self.config.mesh.fsdp > 1))

  def _state_shapes(self, tx):
    """Shapes and dtypes of a state with optimizer `tx` (every seed's alike), traced once per `tx`."""
    return self.built(('state_shapes', tx), lambda: jax.eval_shape(lambda: self._unplaced_state(0, tx)))

  def epoch_inputs(self, seed: int, phase: int, epoch: int, start: int = 0):
    """The train step's inputs for steps `start`, `start` + 1, … of one epoch; a function of (seed, phase, epoch)."""
    return self.population_inputs((seed,), phase, epoch, start)

  def population_inputs(self, seeds, phase: int, epoch: int, start: int = 0):
    """The inputs of `step(..., seeds=len(seeds))` from step `start` of one epoch: the data's resident arrays, then
    its batch (every seed's stacked, each in its own data order, for several seeds)."""
    stacked = len(seeds) > 1
    for batch in self.dataset.train_batches(self.config.batch_size, seeds=tuple(seeds), phase=phase, epoch=epoch,
                                            start=start, workers=self.config.data_workers, process=self._process):
      yield *self.resident['train'], *(self.put_rows(rows, stacked) for rows in batch)

  def _unplaced_state(self, seed: int, tx) -> train.TrainState:
    key = jax.random.PRNGKey(seed)
    init = jax.jit(train.init_variables, static_argnums=(0, 2))
    params, batch_stats = init(self.model, key, self.dataset.image_shape)
    # its own buffers (the step donates params); not sharding.copy: unplaced, and traced by abstract_state
    init_params = jax.device_put(params, may_alias=False)
    return train.create_state(params, batch_stats, pruning.full_mask(params), init_params, tx,
                              jax.random.fold_in(key, 1))

  def fresh_state(self, seed: int, tx) -> train.TrainState:
    """A dense network initialised from `seed`, remembering its initial values, placed on the mesh."""
    return self.place(self._unplaced_state(seed, tx), tx)

  def place(self, state: train.TrainState, tx) -> train.TrainState:
    """`state` (with optimizer `tx`) moved to where the compiled step expects it."""
    return sharding.put_state(state, self.state_shardings(tx))

  def abstract_state(self, tx):
    """Shapes, dtypes and shardings of a state with optimizer `tx`: the target a checkpoint is restored into."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self._state_shapes(tx),
                        self.state_shardings(tx))

  def abstract_params(self):
    """Shapes and dtypes of the model's params."""
    return jax.eval_shape(lambda: train.init_variables(self.model, jax.random.PRNGKey(0),
                                                        self.dataset.image_shape))[0]

  def put_batch(self, array) -> jax.Array:
    """One batch's host array (indices, weights), the same on every host, split over the devices."""
    return sharding.put(array, sharding.batch_sharding(self.mesh))

  def put_rows(self, rows, stacked: bool = False) -> jax.Array:
    """This host's rows of a global batch, split over the devices (`stacked`: of a batch per seed, stacked)."""
    return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, stacked), rows)

  @property
  def _process(self) -> tuple[int, int]:
    return jax.process_index(), jax.process_count()

  def evaluate(self, state: train.TrainState) -> dict:
    """Test loss and accuracy of `state` with its own BatchNorm statistics."""
    devices = self.mesh.size
    batch_size = -(-min(self.config.eval_batch_size, self.dataset.num_test) // devices) * devices
    batches = self.dataset.test_batches(batch_size, workers=self.config.data_workers, process=self._process)
    totals = [self.eval_step(state.params, state.batch_stats, *self.resident['test'], *map(self.put_rows, batch))
              for batch in batches]
    loss, correct = np.sum(np.asarray(jax.device_get(totals)), axis=0)
    return {'loss': float(loss / self.dataset.num_test), 'accuracy': float(correct / self.dataset.num_test)}


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  """Loads the data, builds the model and the mesh of `config`; UserError for a batch the data or devices refuse."""
  dataset = data_lib.load(config.dataset, config.data_dir or None, config.download, config.normalization)
  if config.train_examples:
    dataset = data_lib.first_examples(dataset, config.train_examples)
  model = models.create_model(config.model, dataset.num_classes, config.init, config.drop_connect)
  params, _ = jax.eval_shape(lambda: train.init_variables(model, jax.random.PRNGKey(0), dataset.image_shape))
  if config.batch_size > dataset.num_train:
    raise UserError(f'--config.batch_size={config.batch_size} exceeds the {dataset.num_train} '
                    f'training examples of {config.dataset}')
  mesh = sharding.make_mesh(config.mesh.fsdp)
  if config.batch_size % mesh.size:
    raise UserError(f'--config.batch_size={config.batch_size} must be a multiple of the {mesh.size} devices')
  resident = {split: tuple(sharding.put(array, sharding.replicated(mesh)) for array in dataset.resident(split))
              for split in ('train', 'test')}
  eval_step = train.make_eval_step(model, dataset.mean, dataset.std, config.compute_dtype)
  return Setup(config=config, model=model, dataset=dataset, resident=resident,
               is_norm=pruning.norm_leaves(params), prunable=pruning.prunable_leaves(params, config.prune.exclude),
               eval_step=jax.jit(conv.using(config.conv, eval_step), out_shardings=sharding.replicated(mesh),
                                 compiler_options=conv.compiler_options()), mesh=mesh)
