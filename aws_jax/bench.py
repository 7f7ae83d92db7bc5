"""Training-step speed: `python -m aws_jax.bench --model=resnet20 --batch=128 [--torch]` prints one JSON line.

Times aws_jax's jitted train step (AWS interpolation on, masked kernels, SGD momentum + weight decay) on random
32×32×3 data: compile time separately, then the median over `--steps` steps. With `--torch`, runs
../shared/bench/torch_reference.py (the authors' way of training) on the same machine right after, and prints the
ratio aws_jax / PyTorch.
"""
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

from aws_jax import models, pruning, train

_MODEL = flags.DEFINE_enum('model', 'resnet20', models.MODELS, 'Model to time.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_IMAGE = flags.DEFINE_integer('image', 32, 'Image side.')
_CLASSES = flags.DEFINE_integer('classes', 10, 'Number of classes.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps after compilation.')
_SPARSITY = flags.DEFINE_float('sparsity', 0.0, 'Fraction of prunable weights masked (global magnitude).')
_AWS = flags.DEFINE_boolean('aws', True, 'Interpolate normalization parameters (AWS) in the step.')
_TORCH = flags.DEFINE_boolean('torch', False, 'Also time ../shared/bench/torch_reference.py.')
_TORCH_SCRIPT = flags.DEFINE_string(
    'torch_script', os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'bench', 'torch_reference.py'),
    'Path of the PyTorch reference script.')


def time_train_step(model_name: str, batch: int, image: int, classes: int, steps: int, sparsity: float,
                    aws: bool) -> dict:
  """Compile time and per-step times of one jitted train step on random data."""
  model = models.create_model(model_name, classes)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 5e-4)
  key = jax.random.PRNGKey(0)
  params, batch_stats = train.init_variables(model, key, (image, image, 3))
  prunable = pruning.prunable_leaves(params)
  mask = pruning.full_mask(params)
  if sparsity:
    mask = pruning.prune_global_magnitude(params, mask, prunable, sparsity)
    params = pruning.apply_mask(params, mask)
  state = train.create_state(params, batch_stats, mask, jax.tree.map(jnp.copy, params), tx, key)
  images = jax.random.normal(key, (batch, image, image, 3))
  labels = jax.random.randint(key, (batch,), 0, classes)
  indices = jnp.arange(batch)
  step = jax.jit(train.make_train_step(model, tx, aws=aws, is_norm=pruning.norm_leaves(params),
                                       augmentation='none', mean=np.zeros(3, np.float32),
                                       std=np.ones(3, np.float32)), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, images, labels, indices).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    state, metrics = compiled(state, images, labels, indices)
    jax.block_until_ready(metrics['loss'])
    if i >= 2:
      times.append((time.perf_counter() - start) * 1e3)
  return {'framework': 'jax', 'version': jax.__version__, 'model': model_name, 'batch': batch, 'image': image,
          'aws': aws, 'sparsity': sparsity, 'params': sum(int(np.size(p)) for p in jax.tree.leaves(params)),
          'compile_s': round(compile_s, 2), 'ms_per_step_median': round(statistics.median(times), 2),
          'ms_per_step_min': round(min(times), 2), 'steps': steps, 'device': str(jax.devices()[0]),
          'machine': platform.machine()}


def main(argv):
  del argv
  result = {'jax': time_train_step(_MODEL.value, _BATCH.value, _IMAGE.value, _CLASSES.value, _STEPS.value,
                                   _SPARSITY.value, _AWS.value)}
  if _TORCH.value:
    command = [sys.executable, _TORCH_SCRIPT.value, f'--model={_MODEL.value}', f'--batch={_BATCH.value}',
               f'--image={_IMAGE.value}', f'--classes={_CLASSES.value}', f'--steps={_STEPS.value}',
               f'--sparsity={_SPARSITY.value}', '--aws' if _AWS.value else '--no-aws']
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result['torch'] = json.loads(output.strip().splitlines()[-1])
    result['ratio_jax_over_torch'] = round(
        result['jax']['ms_per_step_median'] / result['torch']['ms_per_step_median'], 3)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
