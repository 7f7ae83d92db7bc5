"""Tests for aws_jax.train: the masked (AWS / LRR) train step, schedules, batching and compilation."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aws_jax import models, pruning, train

pytestmark = pytest.mark.xdist_group('train')  # its module-scoped fixtures: one worker builds them once

MODEL = models.SmallCNN(num_classes=3, widths=(4, 8))
N, BATCH = 32, 8
MEAN, STD = np.array([0.5], np.float32), np.array([0.25], np.float32)
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
SHAPES, _ = jax.eval_shape(lambda: train.init_variables(MODEL, jax.random.PRNGKey(0), (8, 8, 1)))
IS_NORM, PRUNABLE = pruning.norm_leaves(SHAPES), pruning.prunable_leaves(SHAPES)


@pytest.fixture(scope='module')
def net():
  """Data, a random kernel mask and masked params whose ψ has moved away from its initial value."""
  rng = np.random.default_rng(0)
  # An 'rbg' key only to initialise: threefry's sampler compiles slowly on CPU.
  init_params, batch_stats = jax.jit(lambda k: train.init_variables(MODEL, k, (8, 8, 1)))(
      jax.random.key(0, impl='rbg'))
  mask = jax.tree.map(lambda p, rule: jnp.asarray(rng.random(p.shape) < 0.5 if rule else np.ones(p.shape, bool)),
                      init_params, PRUNABLE)
  params = jax.tree.map(lambda p, norm: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype) if norm else p,
                        init_params, IS_NORM)
  return {'images': jnp.asarray(rng.random((N, 8, 8, 1)), jnp.float32),
          'labels': jnp.asarray(rng.integers(0, 3, N), jnp.int32),
          'init_params': init_params, 'batch_stats': batch_stats, 'mask': mask,
          'params': pruning.apply_mask(params, mask)}


def make_tx(optimizer='sgd', lr=LR):
  return train.make_optimizer(optimizer, train.schedule('constant', lr, 100), MOMENTUM, WD)


def make_step(aws, optimizer='sgd', lr=LR):
  return train.make_train_step(MODEL, make_tx(optimizer, lr), aws=aws, is_norm=IS_NORM, augmentation='none',
                               mean=MEAN, std=STD)


def jitted_step(aws, optimizer='sgd', lr=LR):
  """One compiled step per configuration, shared by the tests."""
  return _jitted_step(aws, optimizer, lr)


@functools.cache
def _jitted_step(aws, optimizer, lr):
  return jax.jit(make_step(aws, optimizer, lr))


def make_state(net, tx, seed=1, mask=None):
  mask = net['mask'] if mask is None else mask
  return train.create_state(pruning.apply_mask(net['params'], mask), net['batch_stats'], mask,
                            net['init_params'], tx, jax.random.PRNGKey(seed))


def batch(i):
  return jnp.arange(i * BATCH, (i + 1) * BATCH, dtype=jnp.int32) % N


def hand_loss(params, batch_stats, images, labels):
  """Cross-entropy of BatchNorm in training mode, built without the step; aux: (logits, new batch_stats)."""
  logits, updates = MODEL.apply({'params': params, 'batch_stats': batch_stats}, (images - MEAN) / STD, train=True,
                                mutable=['batch_stats'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, (logits, updates['batch_stats'])


hand_grad = jax.jit(jax.value_and_grad(hand_loss, has_aux=True))


def prunable_pairs(tree, mask):
  """(values, mask) of every prunable leaf, as numpy arrays."""
  return [(np.asarray(v), np.asarray(m))
          for v, m, r in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), jax.tree.leaves(PRUNABLE)) if r]


# Masking.


@pytest.mark.parametrize('optimizer, lr, moments', [('sgd', LR, ('trace',)), ('adam', 1e-3, ('mu', 'nu'))])
def test_pruned_weights_stay_exactly_zero(net, optimizer, lr, moments):
  step = jitted_step(True, optimizer, lr)
  state = start = make_state(net, make_tx(optimizer, lr))
  for i in range(5):
    state, metrics = step(state, net['images'], net['labels'], batch(i))
  chex.assert_tree_all_finite(state.params)
  assert np.isfinite(metrics['loss'])
  for (new, mask), (old, _) in zip(prunable_pairs(state.params, net['mask']),
                                   prunable_pairs(start.params, net['mask'])):
    assert 0 < mask.sum() < mask.size
    assert np.all(new[~mask] == 0)
    assert np.all(new[mask] != old[mask])
  for name in moments:
    for moment, mask in prunable_pairs(optax.tree_utils.tree_get(state.opt_state, name), net['mask']):
      assert np.all(moment[~mask] == 0) and np.all(moment[mask] != 0)
  for new, old in zip(jax.tree.leaves(state.params['classifier']), jax.tree.leaves(start.params['classifier'])):
    assert np.all(np.asarray(new) != np.asarray(old))  # Never masked: every entry trains.
  chex.assert_trees_all_equal(state.mask, net['mask'])
  assert int(state.step) == 5


def test_batch_stats_change(net):
  state, _ = jitted_step(False)(make_state(net, make_tx()), net['images'], net['labels'], batch(0))
  for new, old in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(net['batch_stats'])):
    assert np.all(np.asarray(new) != np.asarray(old))


# LRR (aws=False) against a step built by hand.


def test_lrr_step_equals_hand_built_sgd(net):
  state = make_state(net, make_tx())
  params, batch_stats, mask = state.params, state.batch_stats, state.mask
  trace = jax.tree.map(jnp.zeros_like, params)
  for i in range(2):
    state, metrics = jitted_step(False)(state, net['images'], net['labels'], batch(i))
    labels = net['labels'][batch(i)]
    (loss, (logits, batch_stats)), grads = hand_grad(params, batch_stats, net['images'][batch(i)], labels)
    # PyTorch SGD: t = g + wd·w + momentum·t; w -= lr·t; masked.
    trace = jax.tree.map(lambda g, w, t, m: jnp.where(m, g, 0) + WD * w + MOMENTUM * t, grads, params, trace, mask)
    params = jax.tree.map(lambda w, t, m: jnp.where(m, w - LR * t, 0), params, trace, mask)
    assert metrics['alpha'] == 0
    np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
    assert int(metrics['correct']) == int(jnp.sum(jnp.argmax(logits, -1) == labels))
  chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state.batch_stats, batch_stats, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(optax.tree_utils.tree_get(state.opt_state, 'trace'), trace, rtol=1e-5, atol=1e-6)


# AWS.


def test_aws_alpha_is_uniform_draw_from_state_rng(net):
  step = jitted_step(True)
  state = make_state(net, make_tx(), seed=1)
  alphas = []
  for i in range(5):
    again, again_metrics = step(state, net['images'], net['labels'], batch(i))
    state, metrics = step(state, net['images'], net['labels'], batch(i))
    assert float(metrics['alpha']) == float(again_metrics['alpha'])  # Same state, same α.
    chex.assert_trees_all_equal(state, again)
    alphas.append(float(metrics['alpha']))
  assert all(0 <= a < 1 for a in alphas)
  assert len(set(alphas)) == 5
  _, other = step(make_state(net, make_tx(), seed=2), net['images'], net['labels'], batch(0))
  assert float(other['alpha']) != alphas[0]


def test_aws_forward_uses_interpolated_norm(net):
  state = make_state(net, make_tx())
  new_state, metrics = jitted_step(True)(state, net['images'], net['labels'], batch(0))
  alpha = float(metrics['alpha'])
  assert 0.05 < alpha < 0.95  # Far enough from both ends to tell them apart.
  images, labels = net['images'][batch(0)], net['labels'][batch(0)]
  mixed = pruning.interpolate_norm(state.params, net['init_params'], alpha, IS_NORM)
  (loss, (_, batch_stats)), grads_mixed = hand_grad(mixed, state.batch_stats, images, labels)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  (plain, _), _ = hand_grad(state.params, state.batch_stats, images, labels)
  (reset, _), _ = hand_grad(net['init_params'], state.batch_stats, images, labels)
  assert abs(float(plain) - float(loss)) > 1e-3 and abs(float(reset) - float(loss)) > 1e-3
  chex.assert_trees_all_close(new_state.batch_stats, batch_stats, rtol=1e-5, atol=1e-6)
  # Gradients reach ψ through ψ′ = α·ψ_init + (1 − α)·ψ, so they are (1 − α) times those at ψ′.
  expected = jax.tree.map(
      lambda w, g, m, norm: jnp.where(m, w - LR * ((1 - alpha) * g if norm else g) - LR * WD * w, 0),
      state.params, grads_mixed, state.mask, IS_NORM)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


# vmap.


def test_step_is_vmappable(net):
  states = [make_state(net, make_tx(), seed=3), make_state(net, make_tx(), seed=4)]
  indices = jnp.stack([batch(0), batch(1)])
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), *states)
  vmapped = jax.jit(jax.vmap(make_step(True), in_axes=(0, None, None, 0)))
  for _ in range(2):
    stacked, metrics = vmapped(stacked, net['images'], net['labels'], indices)
    outs = [jitted_step(True)(s, net['images'], net['labels'], i) for s, i in zip(states, indices)]
    states = [s for s, _ in outs]
    separate = jax.tree.map(lambda a, b: jnp.stack([a, b]), *outs)
    chex.assert_trees_all_close((stacked, metrics), separate, rtol=1e-5, atol=1e-6)
  assert metrics['alpha'][0] != metrics['alpha'][1]


# Schedules.


def test_step_schedule():
  fn = train.schedule('step', 0.1, 100)
  lrs = np.array([fn(s) for s in range(100)])
  np.testing.assert_allclose(lrs[:50], 0.1, rtol=1e-6)
  np.testing.assert_allclose(lrs[50:75], 0.01, rtol=1e-6)
  np.testing.assert_allclose(lrs[75:], 0.001, rtol=1e-6)


def test_cosine_and_constant_schedules():
  cosine = train.schedule('cosine', 0.1, 100)
  np.testing.assert_allclose(cosine(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(cosine(50), 0.1 * (1e-3 + (1 - 1e-3) * 0.5), rtol=1e-6)
  np.testing.assert_allclose(cosine(100), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(cosine(150), 1e-4, rtol=1e-5)
  constant = train.schedule('constant', 0.05, 100)
  assert all(float(constant(s)) == np.float32(0.05) for s in (0, 50, 99, 1000))
  with pytest.raises(ValueError):
    train.schedule('linear', 0.1, 100)


# Batching.


def test_eval_batches_cover_each_index_once():
  batches = list(train.eval_batches(10, 4))
  chex.assert_trees_all_equal(batches, [
      (np.array([0, 1, 2, 3], np.int32), np.ones(4, np.float32)),
      (np.array([4, 5, 6, 7], np.int32), np.ones(4, np.float32)),
      (np.array([8, 9, 0, 0], np.int32), np.array([1, 1, 0, 0], np.float32)),
  ], strict=True)
  indices, valid = map(np.concatenate, zip(*train.eval_batches(10, 5)))
  assert sorted(indices[valid == 1]) == list(range(10)) and valid.sum() == 10


def test_epoch_order():
  order = train.epoch_order(seed=1, phase=2, epoch=3, n=50, batch_size=8)
  assert order.shape == (6, 8) and order.dtype == np.int32
  assert len(set(order.ravel())) == 48 and order.min() >= 0 and order.max() < 50
  np.testing.assert_array_equal(order, train.epoch_order(1, 2, 3, 50, 8))
  for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
    assert not np.array_equal(order, train.epoch_order(*other, 50, 8))


# Compilation.


def test_step_compiles_once_across_pruning(net):
  tx = make_tx()
  step = jax.jit(make_step(True))
  state = make_state(net, tx, mask=pruning.full_mask(net['params']))
  for i in range(2):
    state, _ = step(state, net['images'], net['labels'], batch(i))
  for i in range(2):
    mask = pruning.prune_global_magnitude(state.params, state.mask, PRUNABLE, 0.2)
    params = pruning.apply_mask(state.params, mask)
    state = state.replace(params=params, mask=mask, opt_state=tx.init(params))
    state, _ = step(state, net['images'], net['labels'], batch(i))
  assert pruning.sparsity_summary(state.mask, PRUNABLE)['fraction_left'] == pytest.approx(0.64, abs=0.01)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_bfloat16_compute_keeps_float32_state_and_masks(net):
  """compute_dtype=bfloat16 runs the passes in bf16 (loss within bf16 error of float32), state stays float32."""
  tx = make_tx()
  bf16_step = jax.jit(train.make_train_step(MODEL, tx, aws=False, is_norm=IS_NORM, augmentation='none',
                                            mean=MEAN, std=STD, compute_dtype=jnp.bfloat16))
  indices = jnp.arange(BATCH)
  state_bf16, metrics_bf16 = bf16_step(make_state(net, tx), net['images'], net['labels'], indices)
  _, metrics_f32 = jitted_step(False)(make_state(net, tx), net['images'], net['labels'], indices)
  assert metrics_bf16['loss'].dtype == jnp.float32
  np.testing.assert_allclose(metrics_bf16['loss'], metrics_f32['loss'], rtol=3e-2)
  assert metrics_bf16['loss'] != metrics_f32['loss']  # it really computed in bfloat16
  for tree in (state_bf16.params, state_bf16.batch_stats, state_bf16.opt_state):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))
  for p, m in zip(jax.tree.leaves(state_bf16.params), jax.tree.leaves(state_bf16.mask)):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0)


@pytest.mark.parametrize('norm_weight_decay', [True, False])
def test_norm_weight_decay_decides_whether_psi_decays(norm_weight_decay):
  """With a zero gradient an SGD step is the decay alone: −lr·wd·w on every leaf, or on all but ψ."""
  params = {'conv': {'kernel': jnp.full((2,), 2.0)}, 'bn': {'scale': jnp.full((2,), 0.5), 'bias': jnp.full((2,), 3.0)}}
  is_norm = pruning.norm_leaves(params)
  assert is_norm == {'conv': {'kernel': False}, 'bn': {'scale': True, 'bias': True}}
  decayed = None if norm_weight_decay else jax.tree.map(lambda norm: not norm, is_norm)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 0.01, decayed)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for leaf, update, norm in zip(jax.tree.leaves(params), jax.tree.leaves(updates), jax.tree.leaves(is_norm)):
    expected = 0.0 if norm and not norm_weight_decay else -0.1 * 0.01 * leaf
    np.testing.assert_allclose(update, expected, rtol=1e-6)
