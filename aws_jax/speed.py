"""The measurements `python -m aws_jax.bench` prints (aws_jax/bench.py has the command and what it runs).

Each times aws_jax's jitted programs on random data after compiling them: a train step (masked kernels, AWS
interpolation, SGD momentum + weight decay) and the same step without masks, a large matmul (the machine's
practical peak), the compilations over a pruning stage, an error barrier, and seeds trained as one vmapped step
against one by one. `torch_figures` runs a PyTorch script of the same step; `step_figures_with`, the step in a
process of its own with another oneDNN build. Figures only: nothing here asserts a
speed.
"""
import collections
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from aws_jax import barrier, conv, engine, models, onednn, pruning, train
from aws_jax import config as config_lib

def _median_ms(fn, steps: int) -> tuple[float, float]:
  """Median and min milliseconds of `fn()` (which blocks) over `steps` calls after two warm-up calls."""
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    fn()
    if i >= 2:
      times.append((time.perf_counter() - start) * 1e3)
  return round(statistics.median(times), 2), round(min(times), 2)


def without_masks(step):
  """`step` with every mask a constant all-True array: XLA folds the masking away, the rest of the program is the
  same. The state's masks come back as they went in."""
  def unmasked_step(state, *batch):
    full = jax.tree.map(lambda m: jnp.ones(m.shape, m.dtype), state.mask)
    new_state, metrics = step(state.replace(mask=full), *batch)
    return new_state.replace(mask=state.mask), metrics

  return unmasked_step


def ms_by_operation_kind(run, steps: int) -> dict[str, float]:
  """Milliseconds per step spent in each kind of operation of `run()` (one step, blocking): on CPU, XLA's threads
  (oneDNN's convolutions 'ffi_call', each kind of fusion, copies), summed over threads (so it can exceed the wall
  time); on a GPU, its streams' kernels. From jax.profiler's trace of `steps` steps; the largest first."""
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory):
      for _ in range(steps):
        run()
    trace = jax.profiler.ProfileData.from_file(str(next(pathlib.Path(directory).rglob('*.xplane.pb'))))
  kinds = collections.Counter()
  seen = []
  for plane in trace.planes:
    for line in plane.lines:
      seen.append(f'{plane.name}/{line.name}')
      cpu_ops = 'XLA' in line.name and 'PjRt' not in line.name and 'Modules' not in line.name
      gpu_kernels = plane.name.startswith('/device:GPU') and line.name.startswith('Stream')
      if not (cpu_ops or gpu_kernels):
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'end: ')):  # the executor's own span holds the others
          kinds[event.name.rstrip('0123456789').rstrip('._')] += event.duration_ns / 1e6 / steps
  if not kinds:
    raise ValueError(f'no operation in the trace\'s lines: {sorted(set(seen))[:40]}')
  return {kind: round(ms, 2) for kind, ms in kinds.most_common(40) if ms >= 0.01}


def step_figures(model_name: str, batch: int, image: int, classes: int, steps: int, sparsity: float,
                 aws: bool, impl: str = 'auto', profile: bool = False) -> dict:
  """Compile time, ms per step and GFLOP/s of one jitted train step with convolutions `impl` (conv.IMPLS), and
  masking's cost inside it: the same step without masks, run in alternation with it. `profile`: also where the
  step's time goes (`ms_by_operation_kind`)."""
  model = models.create_model(model_name, classes)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 5e-4)
  key = jax.random.PRNGKey(0)
  params, batch_stats = jax.jit(train.init_variables, static_argnums=(0, 2))(model, key, (image, image, 3))
  mask = pruning.full_mask(params)
  if sparsity:
    mask = pruning.prune_global_magnitude(params, mask, pruning.prunable_leaves(params), sparsity)
    params = pruning.apply_mask(params, mask)
  copy = functools.partial(jax.tree.map, jnp.copy)
  fresh_state = lambda: train.create_state(  # the step donates its state
      copy(params), copy(batch_stats), copy(mask), copy(params), tx, jnp.copy(key))
  images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, image, image, 3), np.float32))
  labels = jnp.asarray(np.random.default_rng(1).integers(0, classes, batch), jnp.int32)
  indices = jnp.arange(batch)
  step = train.make_train_step(model, tx, aws=aws, is_norm=pruning.norm_leaves(params), augmentation='none',
                               mean=np.zeros(3, np.float32), std=np.ones(3, np.float32))
  compile_step = lambda impl, step: jax.jit(conv.using(impl, step), donate_argnums=0,
                                            compiler_options=conv.compiler_options()).lower(
                                                fresh_state(), images, labels, indices).compile()
  start = time.perf_counter()
  compiled = {'masked': compile_step(impl, step)}
  compile_s = time.perf_counter() - start
  # XLA's FLOP count of the model's work: with plain lax convolutions (it counts no custom call's work).
  counted = compiled['masked'] if conv.resolve(impl) == 'lax' else compile_step('lax', step)
  flops = (counted.cost_analysis() or {}).get('flops', float('nan'))
  compiled['unmasked'] = compile_step(impl, without_masks(step))
  states = {kind: fresh_state() for kind in compiled}
  times = {kind: [] for kind in compiled}
  for i in range(steps + 2):  # in alternation, so that a loaded machine slows both alike
    for kind, program in compiled.items():
      start = time.perf_counter()
      states[kind], metrics = program(states[kind], images, labels, indices)
      jax.block_until_ready(metrics['loss'])
      if i >= 2:
        times[kind].append((time.perf_counter() - start) * 1e3)
  median, unmasked = (statistics.median(times[kind]) for kind in ('masked', 'unmasked'))
  figures = {}
  if profile:
    def run_step():
      states['masked'], metrics = compiled['masked'](states['masked'], images, labels, indices)
      jax.block_until_ready(metrics['loss'])
    try:
      figures['ms_by_operation_kind'] = ms_by_operation_kind(run_step, min(steps, 5))
    except Exception as error:  # a backend whose profiler is missing or differs: the timings still stand
      figures['profile_error'] = f'{type(error).__name__}: {error}'
  on_onednn = conv.resolve(impl).startswith('onednn')
  return figures | {'model': model_name, 'batch': batch, 'image': image, 'classes': classes, 'aws': aws,
          'sparsity': sparsity, 'convolutions': conv.resolve(impl),
          'onednn_library': onednn.library() if on_onednn else None, 'onednn': onednn.version() if on_onednn else None,
          'params': sum(int(np.size(p)) for p in jax.tree.leaves(params)),
          'compile_s': round(compile_s, 2), 'ms_per_step_median': round(median, 2),
          'ms_per_step_min': round(min(times['masked']), 2),
          'gflop_per_step': round(flops / 1e9, 2), 'gflops_achieved': round(flops / median / 1e6, 1),
          'ms_per_step_without_masks': round(unmasked, 2), 'masking_ms': round(median - unmasked, 2),
          'masking_share': round((median - unmasked) / median, 4)}


def torch_figures(script: str, model_name: str, batch: int, image: int, classes: int, steps: int,
                  sparsity: float, aws: bool, device: str = 'cpu') -> dict:
  """The JSON line of the PyTorch step script `script` (benchmarks/torch_baseline.py's flags) on `device`."""
  command = [sys.executable, script, f'--model={model_name}', f'--batch={batch}', f'--image={image}',
             f'--classes={classes}', f'--steps={steps}', f'--sparsity={sparsity}', '--aws' if aws else '--no-aws',
             *([f'--device={device}'] if device != 'cpu' else [])]
  output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def step_figures_with(library: str, *args) -> dict:
  """`step_figures(*args)` in a process of its own whose oneDNN convolutions are `library`'s (one of
  onednn.LIBRARIES, through AWS_JAX_ONEDNN_LIBRARY); RuntimeError where that process runs others."""
  code = 'import json, sys; from aws_jax import speed; print(json.dumps(speed.step_figures(*json.loads(sys.argv[1]))))'
  result = subprocess.run([sys.executable, '-c', code, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, 'AWS_JAX_ONEDNN_LIBRARY': library})
  if result.returncode:
    raise RuntimeError(f'the step with oneDNN {library!r} failed: {result.stderr[-3000:]}')
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  if figures['onednn_library'] != library:
    raise RuntimeError(f'asked for oneDNN {library!r}, the step ran {figures["convolutions"]!r} convolutions '
                       f'({figures["onednn_library"]!r}): {result.stderr[-3000:]}')
  return figures


def compared(setting: tuple, image: int, steps: int, aws: bool, repeats: int, torch_script: str | None,
             impl: str = 'auto', profile: bool = False, libraries: tuple[str, ...] = ()) -> list[dict]:
  """aws_jax's step figures, and with a `torch_script`, PyTorch's in alternation with them, `repeats` times; with
  `libraries` (onednn.LIBRARIES), aws_jax's once per oneDNN build in each alternation, each in a process of its own
  (`step_figures_with`). One row per build (this process's where none given): the run of the fastest aws_jax
  median, PyTorch's fastest median, their ratio, every run's medians (the spread) and each alternation's ratio."""
  model_name, batch, classes, sparsity = setting
  device = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'  # PyTorch on the device aws_jax runs on
  args = (model_name, batch, image, classes, steps, sparsity, aws, impl, profile)
  jax_runs = {library: [] for library in libraries or (None,)}
  torch_runs = []
  for _ in range(repeats):  # in alternation, so that a loaded machine slows each alike
    for library, runs in jax_runs.items():
      runs.append(step_figures(*args) if library is None else step_figures_with(library, *args))
    if torch_script:
      torch_runs.append(torch_figures(torch_script, model_name, batch, image, classes, steps, sparsity, aws, device))
  rows = []
  for runs in jax_runs.values():
    result = min(runs, key=lambda r: r['ms_per_step_median'])
    result['ms_per_step_medians'] = [r['ms_per_step_median'] for r in runs]
    result['masking_shares'] = [r['masking_share'] for r in runs]
    if torch_script:
      torch_ms = [r['ms_per_step_median'] for r in torch_runs]
      result['torch_ms_per_step_medians'] = torch_ms
      result['torch_ms_per_step_median'] = min(torch_ms)
      result['torch_version'] = torch_runs[0]['version']
      result['ratio_jax_over_torch'] = round(result['ms_per_step_median'] / min(torch_ms), 3)
      # each alternation's own ratio: on a shared machine, the spread says how far to trust the one above
      result['ratios_per_repeat'] = [round(j / t, 3) for j, t in zip(result['ms_per_step_medians'], torch_ms)]
    rows.append(result)
  return rows


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
      mask = pruning.prune_global_magnitude(state.params, state.mask, setup.prunable, 0.2)
      params = pruning.apply_mask(state.params, mask)
      state = setup.place(state.replace(params=params, mask=mask, opt_state=train.init_optimizer(tx, params)), tx)
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
  endpoints, init = [], jax.jit(train.init_variables, static_argnums=(0, 2))
  for seed in (0, 1):
    params, batch_stats = init(model, jax.random.PRNGKey(seed), (image, image, 3))
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
