"""Many devices mean the same as one: 8 virtual CPU devices (data parallel and FSDP) against a single device."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from aws_jax import protocol
from aws_jax.rundir import RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT, run_cli, tiny_digits_config

pytestmark = pytest.mark.xdist_group('sharding')  # its module-scoped fixtures: one worker builds them once

# Trains a few steps, prunes once, trains a few more on however many devices XLA was given; saves what it saw.
STEPS_SCRIPT = '''
import sys
import jax, numpy as np
sys.path.insert(0, 'tests')
from conftest import tiny_digits_config
from aws_jax import engine, pruning, train
from aws_jax.checkpoints import Checkpoints
config = tiny_digits_config(**{'mesh.fsdp': int(sys.argv[2]), 'init': 'flax'})  # the tolerances below were measured
# with these initialisers (under 'authors', whose weights are smaller, losses drifted 3.3e-4 apart after the pruning)
setup = engine.make_setup(config)
tx = setup.optimizer('constant', 1)
step = setup.step('constant', 1, aws=True)
state = setup.fresh_state(1, tx)
order = train.epoch_order(1, 0, 0, 1437, config.batch_size)
losses, alphas = [], []
for i, indices in enumerate(order[:8]):
  if i == 4:
    mask = pruning.prune_global_magnitude(state.params, state.mask, setup.prunable, 0.5)
    params = pruning.apply_mask(state.params, mask)
    state = setup.place(state.replace(params=params, mask=mask, opt_state=tx.init(params)), tx)
  state, metrics = step(state, setup.train_images, setup.train_labels, setup.put_batch(indices))
  losses.append(float(metrics['loss'])); alphas.append(float(metrics['alpha']))
flat = {'/'.join(map(str, k)): np.asarray(v) for k, v in
        jax.tree_util.tree_flatten_with_path(jax.device_get((state.params, state.batch_stats, state.mask)))[0]
        for k in [tuple(getattr(p, 'key', getattr(p, 'idx', p)) for p in k)]}
kernel = state.params['Conv_1']['kernel']
traced = []  # the functions traced while the state is first saved
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _, **kw: traced.append(kw.get('fun_name')) if event.endswith('jaxpr_trace_duration') else None)
with Checkpoints(sys.argv[1] + '.checkpoints') as checkpoints:  # beside the output, in the test's directory
  checkpoints.save(0, state, {})
np.savez(sys.argv[1], losses=losses, alphas=alphas, devices=jax.device_count(),
         kernel_shards=len(kernel.sharding.device_set) if kernel.sharding.spec != () else 1,
         kernel_replicated=kernel.sharding.is_fully_replicated, compiles=step._cache_size(),
         traced_by_save=sorted(set(traced)), **flat)
'''


def run_steps(tmp_path, devices: int, fsdp: int = 1) -> dict:
  out = tmp_path / f'steps_{devices}_{fsdp}.npz'
  # XLA's convolutions on both sides: one device would otherwise run oneDNN's, whose float32 sums round differently.
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'AWS_JAX_ONEDNN': '0'}
  result = subprocess.run([sys.executable, '-c', STEPS_SCRIPT, str(out), str(fsdp)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out))


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  return run_steps(tmp_path_factory.mktemp('one'), 1)


@pytest.mark.parametrize('fsdp', [1, 2])
def test_eight_devices_train_and_prune_like_one(one_device, tmp_path, fsdp):
  eight = run_steps(tmp_path, 8, fsdp)
  assert eight['devices'] == 8 and one_device['devices'] == 1
  assert eight['compiles'] == 1  # pruning changed mask values, not shapes or placements
  assert bool(eight['kernel_replicated']) == (fsdp == 1)
  # a save compiles nothing per device (orbax's replica-parallel saving sliced each replicated array 8 ways)
  assert set(eight['traced_by_save']) <= {'signs'}, eight['traced_by_save']
  np.testing.assert_array_equal(eight['alphas'], one_device['alphas'])  # one α per global step
  np.testing.assert_allclose(eight['losses'], one_device['losses'], rtol=1e-4)
  for key, value in one_device.items():
    if key.startswith('0/') or key.startswith('1/'):  # params and BatchNorm statistics: 8 shards sum in another
      # order; measured on an Intel Xeon (AVX-512, AMX): at most 9.2e-5 apart on weights of ~0.05 (2 of 18,432)
      np.testing.assert_allclose(eight[key], value, rtol=1e-3, atol=2e-4, err_msg=key)
    elif key.startswith('2/'):  # masks
      assert np.mean(eight[key] == value) > 0.999, key


def test_checkpoints_move_between_one_and_eight_devices(tmp_path):
  """Pruning on 8 devices, final stage on 1, and the other way round (one device: this process)."""
  assert jax.device_count() == 1
  common = {'prune.rounds': 1, 'prune.warmup_epochs': 1, 'prune.round_epochs': 1, 'final.modes': ('signed',),
            'final.epochs': 1, 'barrier.psi_reset': False, 'train_examples': 0}  # learns: accuracy > 0.5 below
  for first, second in ((8, 1), (1, 8)):
    workdir = tmp_path / f'{first}_then_{second}'
    for devices, stage in ((first, 'prune'), (second, 'final')):
      if devices == 1:
        protocol.run(tiny_digits_config(**common, stage=stage), str(workdir))
        continue
      flags = [f'--config.{key}={value}' for key, value in {**common, 'stage': stage}.items()]
      os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
      try:
        result = run_cli(workdir, *flags)
      finally:
        del os.environ['XLA_FLAGS']
      assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(pathlib.Path(RunDir(workdir).results).read_text())
    assert [f['mode'] for f in results['final']] == ['signed']
    assert results['final'][0]['test_accuracy'] > 0.5
