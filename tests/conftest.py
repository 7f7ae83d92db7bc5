"""Shared fixtures: a tiny digits config and a helper to run the CLI as a user would."""
import os
import shutil
import subprocess
import tempfile
import sys

import pytest

from aws_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The limit on every subprocess a test starts: a safety net against a hung process, far above what the slowest of
# them takes on a loaded 2-core machine (no test asserts a wall time).
SUBPROCESS_TIMEOUT = 1800


def pytest_configure(config):
  """One persistent XLA compilation cache for the session and the CLI runs it starts: same programs, less waiting;
  TCMalloc preloaded for the workers and every process they start, as the CLI restarts itself (aws_jax/allocator.py:
  faster steps, and no restart per command); the markers."""
  config.addinivalue_line('markers', 'paper_config: a paper config end to end on fake data (minutes each on a CPU)')
  config.addinivalue_line('markers', 'long: a minute or more on 2 cores; scheduled first, so that the others fill in '
                                     'around it')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='aws_jax_xla_cache_'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  os.environ.update(allocator.preload_env(os.environ) or {})  # xdist starts its workers after this hook
  if shutil.which('nvidia-smi'):  # NVIDIA GPUs multiply float32 in TF32 by default; the tests' tolerances are float32's
    os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
    # and pick reductions and cuDNN algorithms that may differ run to run; the tests resume bit for bit (README, GPU)
    os.environ['XLA_FLAGS'] = ' '.join(filter(None, (os.environ.get('XLA_FLAGS'), '--xla_gpu_deterministic_ops=true')))


def pytest_collection_modifyitems(items):
  """Tests marked `long` first (in their order), then the rest: xdist balances the short ones around the long."""
  items.sort(key=lambda item: item.get_closest_marker('long') is None)


def without_times(record):
  """`record` (results, a round, a list of them) without what the clock decides: wall_s and time_*_s fields."""
  if isinstance(record, dict):
    return {k: without_times(v) for k, v in record.items()
            if k != 'wall_s' and not (k.startswith('time_') and k.endswith('_s'))}
  if isinstance(record, list):
    return [without_times(v) for v in record]
  return record


def tiny_digits_config(**overrides):
  """configs/digits.py shrunk to a few seconds of training (on its first TINY_EXAMPLES training images), its
  barriers to 3 points re-estimating BatchNorm on 4 batches; `overrides` use dotted keys."""
  from aws_jax import cli  # pylint: disable=import-outside-toplevel
  config = cli.get_config(os.path.join(REPO, 'configs', 'digits.py'))
  config.train_examples = TINY_EXAMPLES
  config.prune.warmup_epochs = 3
  config.prune.rounds = 3
  config.prune.round_epochs = 2
  config.final.epochs = 4
  config.final.seeds = (2,)
  config.checkpoint_every_epochs = 2
  config.barrier.points = 3
  config.barrier.bn_batches = 4
  config.progress = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


# Six batches of 64 an epoch, for tests that assert what a run writes and how it resumes; those that assert how well
# a network learns train on all of digits' training images (train_examples=0).
TINY_EXAMPLES = 384
TINY_FLAGS = (f'--config.train_examples={TINY_EXAMPLES}', '--config.prune.warmup_epochs=3', '--config.prune.rounds=3',
              '--config.prune.round_epochs=2', '--config.final.epochs=4', '--config.final.seeds=(2,)',
              '--config.checkpoint_every_epochs=2', '--config.barrier.points=3', '--config.barrier.bn_batches=4',
              '--config.progress=False')


def cli_command(workdir, *flags, config='configs/digits.py'):
  return [sys.executable, '-m', 'aws_jax.main', f'--config={os.path.join(REPO, config)}', f'--workdir={workdir}',
          *TINY_FLAGS, *flags]


def run_cli(workdir, *flags, config='configs/digits.py', timeout=SUBPROCESS_TIMEOUT):
  """Runs `python -m aws_jax.main` on the tiny digits protocol; returns the CompletedProcess."""
  return subprocess.run(cli_command(workdir, *flags, config=config), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture
def tiny_config():
  return tiny_digits_config


def assert_same_values_and_gradients(reference, ours, *args, rtol=1e-4, atol=1e-4):
  """`ours(*args)` and its VJP for a random cotangent equal `reference`'s, both jitted together."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  shape = jax.eval_shape(reference, *args).shape
  cotangent = np.random.default_rng(0).standard_normal(shape, np.float32)

  @jax.jit
  def values_and_grads(*args):
    return [(f(*args), *jax.vjp(f, *args)[1](cotangent)) for f in (reference, ours)]

  for a, b in zip(*values_and_grads(*args)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def tensorboard_scalars(directory) -> dict:
  """{(run, tag): {step: value}} as TensorBoard shows it: a session start at step s hides earlier events at >= s."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars = {}
  for run in sorted(os.listdir(directory)):
    for name in sorted(os.listdir(os.path.join(directory, run))):  # event files sort by creation time
      with open(os.path.join(directory, run, name), 'rb') as f:
        while header := f.read(12):
          event = event_pb2.Event.FromString(f.read(int.from_bytes(header[:8], 'little')))
          f.read(4)
          if event.HasField('session_log') and event.session_log.status == event_pb2.SessionLog.START:
            for (r, _), values in scalars.items():
              if r == run:
                for step in [s for s in values if s >= event.step]:
                  del values[step]
          for value in event.summary.value:
            steps = scalars.setdefault((run, value.tag), {})
            assert event.step not in steps, (run, value.tag, event.step)  # twice, and not purged
            steps[event.step] = value.simple_value
  return scalars
