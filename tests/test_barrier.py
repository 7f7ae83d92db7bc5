"""Tests for aws_jax.barrier (interpolation, BatchNorm re-estimation, error curves and barriers) and its command
line (aws_jax.barrier_command: checkpoints, presets, files; `python -m aws_jax.barrier`)."""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aws_jax import augment, barrier, barrier_command, engine, models, protocol, pruning, stages, train
from aws_jax import config as config_lib
from aws_jax import data as data_lib
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT, tiny_digits_config

pytestmark = pytest.mark.xdist_group('barrier')  # its module-scoped fixtures: one worker builds them once

DIGITS = data_lib.load('digits')
DATA = barrier.path_data(DIGITS.train_images, DIGITS.test_images, DIGITS.test_labels, DIGITS.mean, DIGITS.std,
                         batch_size=128, bn_batches=-1, eval_batch_size=360)


class BNMLP(nn.Module):
  """One hidden layer with BatchNorm: small enough to train in a second, big enough for a real barrier."""
  width: int = 16
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(self.width, use_bias=False)(x.reshape(x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
    return nn.Dense(10, name='classifier')(x)


class TinyMixer(nn.Module):
  """MLP-Mixer in miniature: 4×4 patches, pre-LayerNorm token- and channel-mixing residual blocks."""
  channels: int = 16

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.channels, (4, 4), strides=(4, 4), name='stem')(x)
    x = x.reshape(x.shape[0], -1, self.channels)  # (batch, tokens, channels)
    for _ in range(2):
      y = nn.LayerNorm()(x).swapaxes(1, 2)
      y = nn.Dense(x.shape[1], name=None)(nn.gelu(nn.Dense(2 * x.shape[1])(y)))
      x = x + y.swapaxes(1, 2)
      y = nn.Dense(self.channels)(nn.gelu(nn.Dense(2 * self.channels)(nn.LayerNorm()(x))))
      x = x + y
    return nn.Dense(10, name='classifier')(nn.LayerNorm()(x).mean(axis=1))


def fit(model, variables, steps, lr):
  """Full-batch Adam on the digits training set; returns the trained variables."""
  x = augment.normalize(DIGITS.train_images, DIGITS.mean, DIGITS.std)
  y = jnp.asarray(DIGITS.train_labels)
  tx = optax.adam(lr)

  def step(carry, _):
    params, batch_stats, opt_state = carry

    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                    mutable=['batch_stats'])
      return train.cross_entropy(logits, y).mean(), updates.get('batch_stats', {})

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), None

  @jax.jit
  def run(params, batch_stats):
    (params, batch_stats, _), _ = jax.lax.scan(step, (params, batch_stats, tx.init(params)), None, steps)
    return {'params': params, 'batch_stats': batch_stats}

  return run(variables['params'], variables.get('batch_stats', {}))


def init(model, seed):
  variables = jax.jit(model.init)(jax.random.key(seed, impl='rbg'), jnp.zeros((1, 8, 8, 1)))
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


@functools.cache
def jitted_eval_step(model):
  return jax.jit(train.make_eval_step(model, DIGITS.mean, DIGITS.std))


def accuracy_error(model, variables):
  """Test error (%) of `variables`, evaluated on its own after re-estimating its statistics (if any)."""
  batch_stats = jax.jit(barrier.reestimate_batch_stats, static_argnums=0)(
      model, variables['params'], variables['batch_stats'], DATA.train_images, DATA.bn_batches, DATA.mean, DATA.std)
  metrics = train.evaluate(jitted_eval_step(model), variables['params'], batch_stats, DATA.test_images,
                           DATA.test_labels, 360)
  return 100 * (1 - metrics['accuracy'])


def permute_hidden_units(variables, permutation):
  """The same function as `variables` (a BNMLP), its hidden units reordered."""
  params, stats = variables['params'], variables['batch_stats']
  return {'params': {'Dense_0': {'kernel': params['Dense_0']['kernel'][:, permutation]},
                     'BatchNorm_0': jax.tree.map(lambda p: p[permutation], params['BatchNorm_0']),
                     'classifier': {'kernel': params['classifier']['kernel'][permutation],
                                    'bias': params['classifier']['bias']}},
          'batch_stats': {'BatchNorm_0': jax.tree.map(lambda s: s[permutation], stats['BatchNorm_0'])}}


@pytest.fixture(scope='module')
def mlp():
  model = BNMLP()
  return model, fit(model, init(model, 0), steps=300, lr=3e-3)


@pytest.fixture(scope='module')
def mixer():
  model = TinyMixer()
  return model, fit(model, init(model, 0), steps=300, lr=3e-3)


def test_interpolate_is_exact_at_the_endpoints():
  rng = np.random.default_rng(0)
  a = {'w': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), 'b': {'c': jnp.asarray(rng.normal(size=5))}}
  b = jax.tree.map(lambda x: x * 3.7 - 1.3, a)
  jax.tree.map(np.testing.assert_array_equal, barrier.interpolate(a, b, 0.0), b)
  jax.tree.map(np.testing.assert_array_equal, barrier.interpolate(a, b, 1.0), a)
  jax.tree.map(np.testing.assert_array_equal, jax.jit(barrier.interpolate)(a, b, jnp.float32(1.0)), a)
  jax.tree.map(lambda m, x, y: np.testing.assert_allclose(m, 0.25 * x + 0.75 * y, rtol=1e-6),
               barrier.interpolate(a, b, 0.25), a, b)


@pytest.mark.parametrize('momentum', [0.9, 0.99])
def test_reestimated_statistics_are_the_average_of_batch_statistics(momentum):
  model = BNMLP(width=8, momentum=momentum)
  variables = init(model, 1)
  batches = np.arange(600).reshape(5, 120)
  stats = barrier.reestimate_batch_stats(model, variables['params'], variables['batch_stats'], DATA.train_images,
                                         batches, DATA.mean, DATA.std)
  x = np.asarray(augment.normalize(DIGITS.train_images, DIGITS.mean, DIGITS.std)).reshape(-1, 64)
  hidden = x[batches] @ np.asarray(variables['params']['Dense_0']['kernel'])  # (batches, batch, width)
  np.testing.assert_allclose(stats['BatchNorm_0']['mean'], hidden.mean(axis=1).mean(axis=0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['BatchNorm_0']['var'], hidden.var(axis=1).mean(axis=0), rtol=1e-4)


def reference_reestimation(hidden, unbiased=False):
  """The reference's statistics after `hidden` (batches, batch, width): a fresh BatchNorm (mean 0, variance 1)
  updated by every batch with PyTorch's momentum 0.1; `unbiased`: PyTorch's n/(n − 1) variance."""
  mean, var = np.zeros(hidden.shape[-1]), np.ones(hidden.shape[-1])
  for batch in hidden:
    mean = 0.9 * mean + 0.1 * batch.mean(axis=0)
    var = 0.9 * var + 0.1 * batch.var(axis=0, ddof=1 if unbiased else 0)
  return mean, var


@pytest.fixture(scope='module')
def authors_statistics():
  """'authors' statistics of a BNMLP whose BatchNorm momentum (0.99) is not PyTorch's, and its hidden batches."""
  model = BNMLP(width=8, momentum=0.99)
  variables = init(model, 1)
  batches = np.arange(600).reshape(5, 120)
  stats = barrier.reestimate_batch_stats(model, variables['params'], variables['batch_stats'], DATA.train_images,
                                         batches, DATA.mean, DATA.std, method='authors')
  x = np.asarray(augment.normalize(DIGITS.train_images, DIGITS.mean, DIGITS.std)).reshape(-1, 64)
  return stats['BatchNorm_0'], x[batches] @ np.asarray(variables['params']['Dense_0']['kernel'], np.float64)


def test_authors_reestimation_is_fresh_statistics_updated_with_momentum_0_1(authors_statistics):
  stats, hidden = authors_statistics
  mean, var = reference_reestimation(hidden)
  np.testing.assert_allclose(stats['mean'], mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], var, rtol=1e-4)


def test_authors_reestimation_matches_pytorchs_batchnorm_reset_and_one_pass(authors_statistics):
  """PyTorch's own BatchNorm1d, reset and run in training mode over the batches: the same means; the variances
  once PyTorch's unbiased batch variance (n/(n − 1), n = 120 here) is accounted for, a difference Flax keeps."""
  torch = pytest.importorskip('torch')
  stats, hidden = authors_statistics
  norm = torch.nn.BatchNorm1d(8)
  norm.running_mean.fill_(3.0)  # whatever the statistics were: the reference starts afresh
  norm.reset_running_stats()
  norm.train()
  with torch.no_grad():
    for batch in torch.from_numpy(hidden.astype(np.float32)):
      norm(batch)
  np.testing.assert_allclose(stats['mean'], norm.running_mean.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(norm.running_var.numpy(), reference_reestimation(hidden, unbiased=True)[1], rtol=1e-5)
  np.testing.assert_allclose(stats['var'], reference_reestimation(hidden)[1], rtol=1e-4)


def test_authors_reestimation_augments_each_batch_from_its_seed_and_step():
  model = BNMLP(width=8)
  variables = init(model, 1)
  batches = np.arange(600).reshape(5, 120)[::-1]
  reestimate = functools.partial(barrier.reestimate_batch_stats, model, variables['params'], variables['batch_stats'],
                                 mean=DATA.mean, std=DATA.std, method='authors')
  augmented = np.concatenate([augment.augment(jax.random.fold_in(jax.random.PRNGKey(3), step),
                                               DIGITS.train_images[indices], 'crop_flip')
                              for step, indices in enumerate(batches)])
  stats = reestimate(images=DATA.train_images, batches=batches, augmentation='crop_flip', seed=3)
  expected = reestimate(images=jnp.asarray(augmented), batches=np.arange(600).reshape(5, 120))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), stats, expected)
  assert np.any(augmented != DIGITS.train_images[batches.ravel()])


def test_barrier_of_a_network_with_itself_is_zero_and_endpoints_keep_their_accuracy(mlp):
  model, a = mlp
  b = fit(model, init(model, 1), steps=300, lr=3e-3)
  itself = barrier.error_curve(model, a, a, DATA)
  assert itself['barrier'] == 0 and np.all(np.array(itself['curve']) == 0)
  path = barrier.error_curve(model, a, b, DATA, points=5)
  assert path['alphas'] == [0, 0.25, 0.5, 0.75, 1]
  assert path['test_error'][-1] == pytest.approx(accuracy_error(model, a), abs=1e-4)
  assert path['test_error'][0] == pytest.approx(accuracy_error(model, b), abs=1e-4)
  assert path['test_error'][-1] < 6  # the fixture learned digits
  np.testing.assert_allclose(path['curve'], np.array(path['test_error']) - np.mean(path['test_error'][::4]))
  assert path['barrier'] == max(path['curve']) == barrier.barrier(path['curve'])


def test_permuted_twin_has_a_high_barrier_and_a_fine_tuned_copy_none(mlp):
  model, a = mlp
  twin = permute_hidden_units(a, np.random.default_rng(0).permutation(16))
  assert accuracy_error(model, twin) == pytest.approx(accuracy_error(model, a), abs=1e-4)
  permuted = barrier.error_curve(model, a, twin, DATA)
  assert permuted['test_error'][0] == pytest.approx(permuted['test_error'][-1], abs=1e-4)
  assert permuted['barrier'] > 10, permuted
  tuned = fit(model, a, steps=50, lr=1e-3)
  connected = barrier.error_curve(model, a, tuned, DATA)
  assert abs(connected['barrier']) < 1, connected


@pytest.mark.parametrize('network, reestimate', [('mlp', 'average'), ('small_cnn', 'authors')])
def test_vmapped_path_is_the_one_by_one_path(mlp, network, reestimate):
  """All points vmapped together (re-estimation included), in chunks, or one after another: the same curve. Measured
  on these networks and on small_cnn (8, 16) with either re-estimation, convolutions by oneDNN, XLA or lax: test
  losses within 2.1e-7 relative, test errors identical; asserted: 1e-6, identical."""
  if network == 'mlp':
    model, a = mlp
    b = permute_hidden_units(a, np.arange(16)[::-1])
  else:
    model = models.SmallCNN(10, widths=(8, 16))
    a, b = init(model, 0), init(model, 1)
  data = DATA.replace(reestimate=reestimate, augmentation='crop_flip')
  one_by_one = barrier.error_curve(model, a, b, data, points=7, chunk=1)
  for chunk in (7, 3):
    together = barrier.error_curve(model, a, b, data, points=7, chunk=chunk)
    np.testing.assert_allclose(together['test_loss'], one_by_one['test_loss'], rtol=1e-6)
    assert together['test_error'] == one_by_one['test_error'] and together['barrier'] == one_by_one['barrier']
  assert one_by_one['barrier'] > 0  # a path with a barrier, so the points differ


def test_layernorm_model_path_and_its_psi_reset(mixer):
  model, trained = mixer
  is_norm = pruning.norm_leaves(trained['params'])
  assert sum(jax.tree.leaves(is_norm)) == 10  # 5 LayerNorms, scale and bias each
  assert barrier.error_curve(model, trained, trained, DATA, points=6)['barrier'] == 0
  state = train.TrainState(step=0, params=trained['params'], batch_stats={}, opt_state=None, mask=None,
                           init_params=init(model, 0)['params'], rng=None)
  path = barrier.psi_reset_curve(model, state, is_norm, DATA, points=6)
  reset = {'params': pruning.reset_norm(state.params, state.init_params, is_norm), 'batch_stats': {}}
  assert path['test_error'][-1] == pytest.approx(accuracy_error(model, trained), abs=1e-4)
  assert path['test_error'][-1] < 10  # the fixture learned digits
  assert path['test_error'][0] == pytest.approx(accuracy_error(model, reset), abs=1e-4)
  assert path['test_error'][0] != path['test_error'][-1]  # ψ (LayerNorm) is on the path


def test_mismatched_networks_are_refused(mlp, mixer):
  model, a = mlp
  with pytest.raises(UserError, match='different architectures: only'):
    barrier.check_compatible(a, mixer[1])
  narrow = init(BNMLP(width=8), 0)
  with pytest.raises(UserError, match=r"'batch_stats/BatchNorm_0/mean' is float32\[16\] in a, float32\[8\] in b"):
    barrier.check_compatible(a, narrow)
  mask = pruning.full_mask(a['params'])
  pruned = pruning.prune_global_magnitude(a['params'], mask, pruning.prunable_leaves(a['params']), 0.2)
  with pytest.raises(UserError, match='different masks'):
    barrier.check_compatible(a, a, mask, pruned)
  barrier.check_compatible(a, permute_hidden_units(a, np.arange(16)), mask, mask)


def test_the_maths_reads_no_checkpoint_and_writes_no_file():
  """aws_jax.barrier imports none of what the command line builds on it (so no import circle through analyses)."""
  code = 'import sys; from aws_jax import barrier; barrier.error_curve; print(" ".join(sys.modules))'
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr
  loaded = set(result.stdout.split())
  assert 'aws_jax.barrier.measure' in loaded
  assert not loaded & {'aws_jax.analyses', 'aws_jax.barrier_command', 'aws_jax.checkpoints', 'aws_jax.engine',
                       'aws_jax.plots', 'aws_jax.reporting', 'aws_jax.rundir', 'matplotlib', 'orbax'}


# --- On the protocol's checkpoints: the ψ-reset barrier of every round, the presets, the command line. -----------

@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A short pruning stage (warm-up, one round), then untrained final-stage starts saved where trainings would be.

  Final trainings are not run to keep this fast: their starts (signed and retrain, seeds 2 and 3, from round 1)
  are saved under the final stage's names, which tests/test_protocol.py checks.
  """
  workdir = str(tmp_path_factory.mktemp('digits'))
  config = tiny_digits_config(**{'prune.warmup_epochs': 2, 'prune.rounds': 1, 'prune.round_epochs': 1,
                                 'final.seeds': (2, 3), 'stage': 'prune', 'barrier.points': 5,
                                 'train_examples': 0})  # trained enough for recalibration to agree with its own
  results = protocol.run(config, workdir)
  setup = engine.make_setup(config)
  source, _, _ = barrier_command.load_checkpoint(setup, 'checkpoints/prune:1', workdir)
  tx = setup.optimizer('step', config.final.epochs)
  for seed in (2, 3):
    for mode in ('signed', 'retrain'):
      state = stages.start_state(setup, mode, pruning.signs(source.params, source.mask), seed, tx, source)
      checkpoints = Checkpoints(RunDir(workdir).checkpoints(RunDir.final_name(mode, 1, seed)))
      checkpoints.save(1, state, {'mode': mode, 'source_round': 1, 'seed': seed,
                                 'test_accuracy': setup.evaluate(state)['accuracy']})
      checkpoints.close()
  return workdir, config, results


def test_pruning_stage_records_the_psi_reset_barrier(digits_run):
  workdir, config, results = digits_run
  setup = engine.make_setup(config)
  for r in results['rounds']:
    assert len(r['psi_reset_test_error']) == len(r['psi_reset_curve']) == 5
    assert r['psi_reset_barrier'] == max(r['psi_reset_curve'])
    assert r['psi_reset_test_error'][-1] == pytest.approx(100 * (1 - r['test_accuracy']), abs=3)
  again = barrier_command.compare(setup, workdir, preset='psi_reset', round_index=1)
  assert again['name'] == 'psi_reset_round1' and again['a'] == 'checkpoints/prune:1'
  assert again['barrier'] == results['rounds'][1]['psi_reset_barrier']
  assert again['test_error'] == results['rounds'][1]['psi_reset_test_error']


def test_presets_compare_the_papers_pairs_and_save_json_and_png(digits_run):
  workdir, config, results = digits_run
  setup = engine.make_setup(config)
  lmc = barrier_command.compare(setup, workdir, preset='lmc')
  assert (lmc['a'], lmc['b']) == ('checkpoints/final/signed_round1_seed2:1', 'checkpoints/final/retrain_round1_seed2:1')
  assert lmc['b_recorded_test_accuracy'] == pytest.approx(results['rounds'][1]['test_accuracy'])
  noise = barrier_command.compare(setup, workdir, preset='sgd_noise')
  assert noise['name'] == 'sgd_noise_round1_seeds2-3' and noise['b'].endswith('signed_round1_seed3:1')
  explicit = barrier_command.compare(setup, workdir, a='checkpoints/final/signed_round1_seed2',
                                     b=os.path.join(workdir, 'checkpoints/final/signed_round1_seed3/1'))
  assert explicit['test_error'] == noise['test_error']
  json_path, png_path = barrier_command.save(noise, workdir)
  assert json_path == os.path.join(RunDir(workdir).barriers, 'sgd_noise_round1_seeds2-3.json')
  with open(json_path) as f:
    assert json.load(f) == noise
  with open(png_path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(UserError, match='compares two seeds'):
    barrier_command.compare(setup, workdir, preset='sgd_noise', seeds=[2])
  with pytest.raises(UserError, match='has no checkpoint 7'):
    barrier_command.compare(setup, workdir, a='checkpoints/prune:7', b='checkpoints/prune:1')


def test_barrier_chunks_benchmark_times_each_chunk_on_the_same_curve(digits_run):
  """benchmarks/barrier_chunks.py: the α points one at a time and all at once give one curve, each timed. Vectorised
  convolutions may sum in another order: test losses 3.3e-8 apart with oneDNN, 3.2e-8 with XLA's convolutions
  (AMD EPYC Zen 4); asserted within 1e-4 for other CPUs and accelerators."""
  spec = importlib.util.spec_from_file_location('barrier_chunks', os.path.join(REPO, 'benchmarks',
                                                                               'barrier_chunks.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  workdir, config, results = digits_run
  figures = module.measure(config, workdir, 1, (1, 5), repeats=1)
  assert [len(f['seconds']) for f in figures.values()] == [1, 1]
  assert all(f['first_s'] > 0 and f['seconds'][0] > 0 for f in figures.values())
  one, five = (figures[chunk]['curve'] for chunk in (1, 5))
  assert one['test_error'] == five['test_error'] and one['barrier'] == results['rounds'][1]['psi_reset_barrier']
  np.testing.assert_allclose(one['test_loss'], five['test_loss'], atol=1e-4)


@pytest.mark.parametrize('key, value, fragment', [
    ('points', 1, 'at least 2'), ('bn_batches', -2, 'one epoch'), ('chunk', -1, '>= 0'),
    ('reestimate', 'ema', 'one of authors, average')])
def test_bad_barrier_config_is_refused(key, value, fragment):
  with pytest.raises(UserError, match=f"--config.barrier.{key}={value!r}? .*{fragment}"):
    config_lib.validate(tiny_digits_config(**{f'barrier.{key}': value}))


def run_barrier_cli(workdir, *flags):
  command = [sys.executable, '-m', 'aws_jax.barrier', f'--config={os.path.join(REPO, "configs/digits.py")}',
             f'--workdir={workdir}', '--config.barrier.bn_batches=3', *flags]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def test_command_line_writes_the_barrier_and_refuses_different_masks_on_one_line(digits_run):
  workdir = digits_run[0]
  result = run_barrier_cli(workdir, '--preset=psi_reset', '--config.barrier.points=3')
  assert result.returncode == 0, result.stderr
  assert 'AWS round 1, ψ reset: barrier' in result.stdout
  with open(os.path.join(RunDir(workdir).barriers, 'psi_reset_round1.json')) as f:
    assert json.load(f)['alphas'] == [0, 0.5, 1]
  assert os.path.exists(os.path.join(RunDir(workdir).barriers, 'psi_reset_round1.png'))
  result = run_barrier_cli(workdir, '--a=checkpoints/prune:0', '--b=checkpoints/prune:1')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'different masks' in errors[0], result.stderr
