"""What a config will cost before it runs: `python -m aws_jax.bench --plan=CONFIG [--config.KEY=VALUE ...]`.

`run_work` and `study_work` count, from the config and its dataset's facts alone (aws_jax/datasets.py), the train
steps of a run (its pruning stage and its final trainings) and of a study of it (methods × pruning seeds × variants,
each method's starts × seeds, dense included), and the images they evaluate: the test split after every epoch, and
the analyses' BatchNorm re-estimations and test evaluations. `measure` times the config's own train step (its model,
image shape, classes, batch, augmentation, AWS or not, convolutions, compute dtype) and its evaluation step on random
images on this device, so no dataset is needed. The estimate is their product: it leaves out compilation,
checkpoints and data loading, and on a machine shared with other work it is an upper bound.
"""
import dataclasses
import math
import os
import statistics
import time

import ml_collections

from aws_jax import config as config_lib
from aws_jax import datasets, study


@dataclasses.dataclass(frozen=True)
class Work:
  """What (a part of) a run trains and evaluates."""
  train_steps: int = 0
  eval_images: int = 0      # test images evaluated after each epoch
  analysis_images: int = 0  # images through the network for the analyses: BatchNorm re-estimations and test
                            # evaluations of the recalibrated accuracy and of each point of an error barrier

  def __add__(self, other: 'Work') -> 'Work':
    return Work(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  return (config.train_examples or datasets.facts(config.dataset).num_train) // config.batch_size


def _analysis_images(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Images through the network for the recalibrated accuracy, and for one point of an error barrier."""
  bn_batches = config.barrier.bn_batches if config.barrier.bn_batches > 0 else steps_per_epoch(config)  # -1, 0: all
  num_test = datasets.facts(config.dataset).num_test
  recalibration = bn_batches * config.batch_size
  return recalibration + num_test, (recalibration if config.barrier.bn_batches else 0) + num_test


def _measured(config: ml_collections.ConfigDict, analysis: str) -> bool:
  """Whether a run measures `analysis` (one that needs the data in memory)."""
  return config_lib.analysis_selected(config, analysis) and not datasets.facts(config.dataset).streamed


def pruning_work(config: ml_collections.ConfigDict, method: str) -> Work:
  """The pruning stage of `method`: every round's epochs, its evaluations and its round analyses."""
  steps, num_test = steps_per_epoch(config), datasets.facts(config.dataset).num_test
  recalibration, point = _analysis_images(config)
  per_round = (recalibration * _measured(config, 'recalibrated_accuracy')
               + (config.barrier.points - 1) * point * _measured(config, 'psi_reset_barrier'))
  total = Work()
  for round_index in range(config_lib.last_round(config, method) + 1):
    epochs = config_lib.round_epochs(config, round_index, method)
    total += Work(epochs * steps, max(epochs, 1) * num_test, per_round)
  return total


def final_work(config: ml_collections.ConfigDict, starts, seeds) -> Work:
  """The final trainings of `starts` × `seeds` from one round, with their barriers: each start's to the retrained
  network of its seed (LMC) and between its seeds (SGD noise), each pair once."""
  trainings, epochs, num_test = len(starts) * len(seeds), config.final.epochs, datasets.facts(config.dataset).num_test
  curves = (_measured(config, 'lmc_barrier') * ('retrain' in starts) * (len(starts) - 1) * len(seeds)
            + _measured(config, 'sgd_noise_barrier') * len(starts) * math.comb(len(seeds), 2))
  return Work(trainings * epochs * steps_per_epoch(config), trainings * epochs * num_test,
              curves * config.barrier.points * _analysis_images(config)[1])


def run_work(config: ml_collections.ConfigDict) -> dict[str, Work]:
  """`python -m aws_jax.main`'s run of `config`: its pruning stage and its final trainings."""
  return {'pruning': pruning_work(config, config.method),
          'final': final_work(config, config.final.modes, config.final.seeds)}


def study_work(config: ml_collections.ConfigDict) -> tuple[Work, dict[str, int]]:
  """`python -m aws_jax.study`'s grid of `config`, and how many pruning stages and final trainings it holds."""
  total, counts = Work(), {'pruning_stages': 0, 'final_trainings': 0}
  for _, variant in study.variants(config):
    for index, _ in enumerate(study.pruning_seeds(variant)):
      for method, finals in study.plan(variant, dense=index == 0).items():
        total += pruning_work(variant, method)
        counts['pruning_stages'] += 1
        for _, starts in finals:
          total += final_work(variant, starts, variant.study.seeds)
          counts['final_trainings'] += len(starts) * len(variant.study.seeds)
  return total, counts


def measure(config: ml_collections.ConfigDict, batch: int, steps: int) -> dict:
  """Compile seconds and median seconds of `config`'s pruning-stage train step at `batch` random images, and seconds
  per image of its evaluation step, on this device."""
  import jax  # pylint: disable=import-outside-toplevel  (the counts above stay light)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from aws_jax import conv, models, pruning, train  # pylint: disable=import-outside-toplevel
  facts = datasets.facts(config.dataset)
  model = models.create_model(config.model, facts.num_classes, config.init, config.drop_connect)
  opt = config.optimizer
  tx = train.make_optimizer(opt.name, opt.lr, opt.momentum, opt.weight_decay)
  key = jax.random.PRNGKey(0)
  params, batch_stats = jax.jit(train.init_variables, static_argnums=(0, 2))(model, key, facts.image_shape)
  state = train.create_state(params, batch_stats, pruning.full_mask(params), jax.tree.map(jnp.copy, params), tx, key)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, *facts.image_shape), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, facts.num_classes, batch), jnp.int32)
  rows, valid = jnp.arange(batch, dtype=jnp.int32), jnp.ones(batch, jnp.float32)
  mean, std = np.full(facts.image_shape[-1], 128, np.float32), np.full(facts.image_shape[-1], 64, np.float32)
  step = train.make_train_step(model, tx, aws=config_lib.recipe(config.method).interpolate,
                               is_norm=pruning.norm_leaves(params), augmentation=facts.augmentation, mean=mean,
                               std=std, compute_dtype=config.compute_dtype)
  start = time.perf_counter()
  compiled = jax.jit(conv.using(config.conv, step), donate_argnums=0, compiler_options=conv.compiler_options()).lower(
      state, images, labels, rows).compile()
  compile_s = time.perf_counter() - start
  evaluate = jax.jit(conv.using(config.conv, train.make_eval_step(model, mean, std, config.compute_dtype)),
                     compiler_options=conv.compiler_options())
  step_times, eval_times = [], []
  for _ in range(steps + 1):  # the first of each warms up
    start = time.perf_counter()
    state, metrics = compiled(state, images, labels, rows)
    jax.block_until_ready(metrics['loss'])
    step_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready(evaluate(state.params, state.batch_stats, images, labels, rows, valid))
    eval_times.append(time.perf_counter() - start)
  return {'batch': batch, 'steps': steps, 'compile_s': round(compile_s, 1),
          'step_s': statistics.median(step_times[1:]), 'eval_s_per_image': statistics.median(eval_times[1:]) / batch}


def seconds(work: Work, figures: dict, batch_size: int) -> dict[str, float]:
  """The wall time of `work` (train, evaluation, analyses) from `measure`'s figures, the step scaled linearly from
  the batch it was timed at to `batch_size`."""
  step_s = figures['step_s'] * batch_size / figures['batch']
  return {'train': work.train_steps * step_s, 'eval': work.eval_images * figures['eval_s_per_image'],
          'analyses': work.analysis_images * figures['eval_s_per_image']}


def duration(value: float) -> str:
  """Seconds as the unit that reads best: s, min, h or days."""
  for unit, size in (('days', 86400), ('h', 3600), ('min', 60)):
    if value >= 2 * size:
      return f'{value / size:.1f} {unit}'
  return f'{value:.0f} s'


def report(config: ml_collections.ConfigDict, spec: str, figures: dict, device: str) -> tuple[list[str], dict]:
  """The plan of `config` as lines to print, and as a dict (also the figures and the estimated seconds)."""
  run, (grid, counts) = run_work(config), study_work(config)
  facts, steps = datasets.facts(config.dataset), steps_per_epoch(config)
  run_seconds = {part: seconds(work, figures, config.batch_size) for part, work in run.items()}
  grid_seconds = seconds(grid, figures, config.batch_size)
  run_total, grid_total = sum(sum(s.values()) for s in run_seconds.values()), sum(grid_seconds.values())
  timed = 'at the config\'s batch' if figures['batch'] == config.batch_size else \
      f'at batch {figures["batch"]}, scaled to {config.batch_size}'
  shares = lambda parts: ', '.join(f'{name} {duration(value)}' for name, value in parts.items())
  lines = [
      f'plan of {spec}: {config.model} on {config.dataset} ({"x".join(map(str, facts.image_shape))} images, '
      f'{facts.num_classes} classes), batch {config.batch_size}: {steps:,} steps an epoch',
      f'  run: pruning stage ({config.method}) {run["pruning"].train_steps:,} steps; final trainings '
      f'{len(config.final.modes)} starts x {len(config.final.seeds)} seeds x {config.final.epochs} epochs = '
      f'{run["final"].train_steps:,} steps',
      f'  study: {counts["pruning_stages"]} pruning stages and {counts["final_trainings"]} final trainings '
      f'({", ".join(config.study.methods)} x {", ".join(config.study.starts)} x seeds '
      f'{", ".join(map(str, config.study.seeds))}): {grid.train_steps:,} steps',
      f'  {device}: train step {figures["step_s"] * 1e3:,.0f} ms ({timed}; median of {figures["steps"]}, compiled in '
      f'{figures["compile_s"]:.0f} s), evaluation {figures["eval_s_per_image"] * 1e3:.2f} ms an image',
      f'  estimate: run {duration(run_total)} (pruning stage {duration(sum(run_seconds["pruning"].values()))}, '
      f'final trainings {duration(sum(run_seconds["final"].values()))}; {shares(_summed(run_seconds))}); '
      f'study {duration(grid_total)} ({shares(grid_seconds)})']
  plan = {'config': spec, 'steps_per_epoch': steps, 'device': device, **figures,
          'run': {part: dataclasses.asdict(work) for part, work in run.items()},
          'study': {**dataclasses.asdict(grid), **counts},
          'run_s': round(run_total), 'study_s': round(grid_total)}
  return lines, plan


def _summed(parts: dict[str, dict[str, float]]) -> dict[str, float]:
  return {name: sum(part[name] for part in parts.values()) for name in next(iter(parts.values()))}


def device_name() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return f'{device.device_kind} ({os.cpu_count()} cores)' if device.platform == 'cpu' else device.device_kind
