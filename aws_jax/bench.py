"""Speed figures as JSON: `python -m aws_jax.bench` (the full suite) or `--only=step --model=resnet20 --torch`.

The suite times aws_jax's jitted train step (masked kernels, AWS interpolation, SGD momentum + weight decay) on
random data: compile time separately, then the median over `--steps` steps; achieved GFLOP/s (XLA's FLOP count of
the model's work) against the peak of a large jitted float32 matmul on the same machine; the cost of AWS
interpolation and of masking; the number of compilations over a pruning stage; an 11-point error barrier's wall
time. With `--torch`, benchmarks/torch_baseline.py (PyTorch, trained the authors' way; `pip install -e ".[torch]"`)
runs the same step alternately in the same invocation, and the ratio aws_jax / PyTorch is printed. `--smoke` shrinks
everything to seconds (CI runs it).
"""
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from aws_jax import allocator, barrier, cli, conv, engine, models, onednn, pruning, train
from aws_jax import config as config_lib

_ONLY = flags.DEFINE_enum('only', None, ['step', 'matmul', 'stage', 'barrier', 'seeds'],
                          'Run one part of the suite.')
_MODEL = flags.DEFINE_enum('model', 'resnet20', models.MODELS, 'Model for --only=step.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size for --only=step.')
_IMAGE = flags.DEFINE_integer('image', 32, 'Image side for --only=step.')
_CLASSES = flags.DEFINE_integer('classes', 10, 'Classes for --only=step.')
_SPARSITY = flags.DEFINE_float('sparsity', 0.0, 'Fraction of prunable weights masked, for --only=step.')
_AWS = flags.DEFINE_boolean('aws', True, 'AWS interpolation in the step, for --only=step.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps after compilation.')
_TORCH = flags.DEFINE_boolean('torch', False, 'Also time the PyTorch baseline (--torch_script), alternating.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Alternations of aws_jax and PyTorch runs with --torch.')
_SMOKE = flags.DEFINE_boolean('smoke', False, 'Tiny sizes and few steps: checks the benchmark runs, times nothing.')
_TORCH_SCRIPT = flags.DEFINE_string(
    'torch_script', os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'torch_baseline.py'),
    'Path of the PyTorch baseline script (needs torch: pip install -e ".[torch]").')

# (model, batch, classes, sparsity) of the suite's step timings: docs/method.md's CIFAR settings.
SUITE = (('resnet20', 128, 10, 0.0), ('resnet20', 128, 10, 0.9), ('vgg16', 128, 10, 0.0), ('vgg16', 128, 10, 0.9),
         ('resnet50', 64, 100, 0.0))
SMOKE_SUITE = (('small_cnn', 8, 10, 0.5),)  # the smallest compile: the smoke run checks the code, times nothing


def _median_ms(fn, steps: int) -> tuple[float, float]:
  """Median and min milliseconds of `fn()` (which blocks) over `steps` calls after two warm-up calls."""
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    fn()
    if i >= 2:
      times.append((time.perf_counter() - start) * 1e3)
  return round(statistics.median(times), 2), round(min(times), 2)


def _model_flops(compile_step) -> float:
  """XLA's FLOP count of the step compiled with XLA's convolutions (it counts no custom call's work) and without
  conv.py's identity matmuls (copies, not the model's work)."""
  saved = conv.USE_ONEDNN, conv.MATERIALIZE_MAX_CHANNELS
  conv.USE_ONEDNN, conv.MATERIALIZE_MAX_CHANNELS = False, 0
  try:
    return (compile_step().cost_analysis() or {}).get('flops', float('nan'))
  finally:
    conv.USE_ONEDNN, conv.MATERIALIZE_MAX_CHANNELS = saved


def step_figures(model_name: str, batch: int, image: int, classes: int, steps: int, sparsity: float,
                 aws: bool) -> dict:
  """Compile time, ms per step, GFLOP/s of one jitted train step, and what masking costs beside it."""
  model = models.create_model(model_name, classes)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 5e-4)
  key = jax.random.PRNGKey(0)
  params, batch_stats = jax.jit(train.init_variables, static_argnums=(0, 2))(model, key, (image, image, 3))
  prunable = pruning.prunable_leaves(params)
  mask = pruning.full_mask(params)
  if sparsity:
    mask = pruning.prune_global_magnitude(params, mask, prunable, sparsity)
    params = pruning.apply_mask(params, mask)
  copy = functools.partial(jax.tree.map, jnp.copy)  # the step donates its state; keep params and mask for later
  state = train.create_state(copy(params), batch_stats, copy(mask), copy(params), tx, key)
  images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, image, image, 3), np.float32))
  labels = jnp.asarray(np.random.default_rng(1).integers(0, classes, batch), jnp.int32)
  indices = jnp.arange(batch)
  make_step = lambda: jax.jit(
      train.make_train_step(model, tx, aws=aws, is_norm=pruning.norm_leaves(params), augmentation='none',
                            mean=np.zeros(3, np.float32), std=np.ones(3, np.float32)),
      donate_argnums=0, compiler_options=conv.compiler_options())
  flops = _model_flops(lambda: make_step().lower(state, images, labels, indices).compile())
  start = time.perf_counter()
  compiled = make_step().lower(state, images, labels, indices).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def run_step():
    holder[0], metrics = compiled(holder[0], images, labels, indices)
    jax.block_until_ready(metrics['loss'])

  median, fastest = _median_ms(run_step, steps)
  masking = jax.jit(lambda p, g, m: (pruning.apply_mask(p, m), pruning.apply_mask(g, m)))
  mask_ms, _ = _median_ms(lambda: jax.block_until_ready(masking(params, params, mask)), steps)
  return {'model': model_name, 'batch': batch, 'image': image, 'classes': classes, 'aws': aws,
          'sparsity': sparsity, 'params': sum(int(np.size(p)) for p in jax.tree.leaves(params)),
          'compile_s': round(compile_s, 2), 'ms_per_step_median': median, 'ms_per_step_min': fastest,
          'gflop_per_step': round(flops / 1e9, 2), 'gflops_achieved': round(flops / median / 1e6, 1),
          'masking_ms': mask_ms, 'masking_share': round(mask_ms / median, 4)}


def torch_figures(model_name: str, batch: int, image: int, classes: int, steps: int, sparsity: float,
                  aws: bool) -> dict:
  command = [sys.executable, _TORCH_SCRIPT.value, f'--model={model_name}', f'--batch={batch}', f'--image={image}',
             f'--classes={classes}', f'--steps={steps}', f'--sparsity={sparsity}', '--aws' if aws else '--no-aws']
  output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def compared(setting: tuple, image: int, steps: int, aws: bool, repeats: int, with_torch: bool) -> dict:
  """aws_jax's step figures, and PyTorch's in alternation with them, with the ratio of the medians."""
  model_name, batch, classes, sparsity = setting
  runs = []
  for _ in range(repeats if with_torch else 1):
    runs.append(('jax', step_figures(model_name, batch, image, classes, steps, sparsity, aws)))
    if with_torch:
      runs.append(('torch', torch_figures(model_name, batch, image, classes, steps, sparsity, aws)))
  result = min((r for kind, r in runs if kind == 'jax'), key=lambda r: r['ms_per_step_median'])
  if with_torch:
    torch_ms = [r['ms_per_step_median'] for kind, r in runs if kind == 'torch']
    result['torch_ms_per_step_median'] = min(torch_ms)
    result['torch_version'] = runs[1][1]['version']
    result['ratio_jax_over_torch'] = round(result['ms_per_step_median'] / min(torch_ms), 3)
  return result


def matmul_peak(size: int, steps: int) -> dict:
  """GFLOP/s of a jitted float32 `size`² matmul: the machine's practical peak."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  product = jax.jit(lambda a: a @ a, compiler_options=conv.compiler_options())
  median, _ = _median_ms(lambda: jax.block_until_ready(product(a)), steps)
  return {'size': size, 'ms': median, 'gflops': round(2 * size ** 3 / median / 1e6, 1)}


def stage_compilations(rounds: int, steps_per_round: int) -> dict:
  """Compilations of the train step over a pruning stage of `rounds` rounds on digits (must be 1)."""
  config = config_lib.base_config()
  config.batch_size = 64
  setup = engine.make_setup(config)
  tx = setup.optimizer('constant', 1)
  step = setup.step('constant', 1, aws=True)
  state = setup.fresh_state(1, tx)
  for round_index in range(rounds + 1):
    if round_index:
      mask = pruning.prune_by_score(jax.tree.map(jnp.abs, state.params), state.mask, setup.prunable, 0.2)
      params = pruning.apply_mask(state.params, mask)
      state = setup.place(state.replace(params=params, mask=mask, opt_state=tx.init(params)), tx)
    for indices in train.epoch_order(1, round_index, 0, 1437, 64)[:steps_per_round]:
      state, _ = step(state, setup.train_images, setup.train_labels, setup.put_batch(indices))
  return {'rounds': rounds, 'train_step_compilations': step._cache_size()}  # pylint: disable=protected-access


def barrier_wall_time(model_name: str, points: int, train_images: int, test_images: int, image: int) -> dict:
  """Wall time of a `points`-point error barrier between two networks on random CIFAR-shaped data."""
  model = models.create_model(model_name, 10)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (train_images, image, image, 3)), jnp.uint8)
  test = jnp.asarray(rng.integers(0, 256, (test_images, image, image, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, test_images), jnp.int32)
  mean, std = np.full(3, 127.5, np.float32), np.full(3, 74.0, np.float32)
  path = barrier.path_data(images, test, labels, mean, std, batch_size=min(128, train_images), bn_batches=-1,
                           eval_batch_size=500)
  endpoints = []
  for seed in (0, 1):
    params, batch_stats = train.init_variables(model, jax.random.PRNGKey(seed), (image, image, 3))
    endpoints.append({'params': params, 'batch_stats': batch_stats})
  start = time.perf_counter()
  curve = barrier.error_curve(model, *endpoints, path, points=points)
  return {'points': points, 'bn_train_images': train_images, 'test_images': test_images,
          'wall_s': round(time.perf_counter() - start, 2), 'barrier': curve['barrier']}


def seeds_figures(model_name: str, seeds: int, batch: int, image: int, channels: int, steps: int) -> dict:
  """Images per second of `seeds` final trainings as one vmapped step against one step per seed in turn."""
  model = models.create_model(model_name, 10)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 5e-4)
  init = jax.jit(train.init_variables, static_argnums=(0, 2))
  states = []
  for seed in range(seeds):
    params, batch_stats = init(model, jax.random.PRNGKey(seed), (image, image, channels))
    states.append(train.create_state(params, batch_stats, pruning.full_mask(params), jax.tree.map(jnp.copy, params),
                                     tx, jax.random.PRNGKey(seed)))
  is_norm = pruning.norm_leaves(states[0].params)
  step = train.make_train_step(model, tx, aws=False, is_norm=is_norm, augmentation='none',
                               mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((seeds * batch, image, image, channels), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, seeds * batch), jnp.int32)
  indices = jnp.asarray(rng.permutation(seeds * batch).reshape(seeds, batch).astype(np.int32))
  one = jax.jit(step, donate_argnums=0, compiler_options=conv.compiler_options())
  together = jax.jit(jax.vmap(step, in_axes=(0, None, None, 0)), donate_argnums=0,
                     compiler_options=conv.compiler_options())
  stacked = [jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)]
  separate = [list(states)]

  def run_together():
    stacked[0], metrics = together(stacked[0], images, labels, indices)
    jax.block_until_ready(metrics['loss'])

  def run_one_by_one():
    for k in range(seeds):
      separate[0][k], metrics = one(separate[0][k], images, labels, indices[k])
    jax.block_until_ready(metrics['loss'])

  vmapped_ms, _ = _median_ms(run_together, steps)
  sequential_ms, _ = _median_ms(run_one_by_one, steps)
  return {'model': model_name, 'seeds': seeds, 'batch': batch, 'image': [image, image, channels],
          'vmapped_images_per_s': round(seeds * batch / vmapped_ms * 1e3, 1),
          'sequential_images_per_s': round(seeds * batch / sequential_ms * 1e3, 1),
          'speedup': round(sequential_ms / vmapped_ms, 3)}


def main(argv):
  del argv
  cli.quiet_logging()
  smoke, steps = _SMOKE.value, 2 if _SMOKE.value else _STEPS.value
  image = 8 if smoke else _IMAGE.value
  result = {'machine': platform.machine(), 'device': str(jax.devices()[0]), 'jax': jax.__version__,
            'cpu_count': os.cpu_count(),
            'convolutions': 'onednn' if conv.USE_ONEDNN and onednn.available() else 'xla',
            'malloc': 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'default'}  # PyTorch's too
  if _ONLY.value == 'step':
    result['step'] = compared((_MODEL.value, _BATCH.value, _CLASSES.value, _SPARSITY.value), image, steps,
                              _AWS.value, _REPEATS.value, _TORCH.value)
  if _ONLY.value in (None, 'matmul'):
    result['matmul_peak'] = matmul_peak(256 if smoke else 4096, steps)
  if _ONLY.value is None:
    result['steps'] = [compared(s, image, steps, True, _REPEATS.value, _TORCH.value)
                       for s in (SMOKE_SUITE if smoke else SUITE)]
    for row in result['steps']:
      row['share_of_matmul_peak'] = round(row['gflops_achieved'] / result['matmul_peak']['gflops'], 3)
    model_name, batch, classes, _ = (SMOKE_SUITE if smoke else SUITE)[0]
    without = step_figures(model_name, batch, image, classes, steps, 0.0, aws=False)
    with_aws = result['steps'][0]
    result['aws_overhead'] = {'model': model_name, 'ms_aws': with_aws['ms_per_step_median'],
                              'ms_lrr': without['ms_per_step_median'],
                              'overhead': round(with_aws['ms_per_step_median'] / without['ms_per_step_median'] - 1,
                                                4)}
  if _ONLY.value in (None, 'stage'):
    result['stage'] = stage_compilations(2 if smoke else 4, 2 if smoke else 5)
  if _ONLY.value in (None, 'barrier'):
    result['barrier'] = barrier_wall_time(SMOKE_SUITE[0][0] if smoke else 'resnet20', 3 if smoke else 11,
                                          64 if smoke else 2000, 32 if smoke else 1000, image)
  if _ONLY.value in (None, 'seeds'):  # final.seeds_at_once: 8 seeds of small_cnn (Fashion-MNIST size), ResNet-20
    result['seeds'] = [seeds_figures('small_cnn', 2 if smoke else 8, 8 if smoke else 128, 8 if smoke else 28, 1, steps)]
    if not smoke:
      result['seeds'].append(seeds_figures('resnet20', 8, 128, image, 3, steps))
  print(json.dumps(result))


if __name__ == '__main__':
  allocator.restart_with_tcmalloc()
  app.run(main)
