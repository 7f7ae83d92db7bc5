"""Tests for aws_jax.pruning on tiny hand-computed parameter trees shaped like Flax params."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aws_jax import pruning

F32 = np.float32
T, F = True, False


def f32(x):
  return np.array(x, F32)


def tiny_params():
  """Conv weights all in [0.40, 0.60]; Dense weights spread on both sides; the rest tiny but never prunable."""
  return {
      'Conv_0': {'kernel': f32([[0.50, -0.45, 0.40], [-0.60, 0.55, -0.42]])},
      'BatchNorm_0': {'scale': f32([0.001, -0.002]), 'bias': f32([0.0, 0.004])},
      'Dense_0': {'kernel': f32([[0.90, -0.05, 0.30], [-0.01, 0.70, -0.20], [0.03, -0.80, 0.35]]),
                  'bias': f32([0.001, 0.0, -0.002])},
      'classifier': {'kernel': f32([[0.001, -0.002], [0.003, 0.0], [-0.004, 0.005]]),
                     'bias': f32([0.0, -0.001])},
  }


PRUNABLE = {
    'Conv_0': {'kernel': T},
    'BatchNorm_0': {'scale': F, 'bias': F},
    'Dense_0': {'kernel': T, 'bias': F},
    'classifier': {'kernel': F, 'bias': F},
}

IS_NORM = {
    'Conv_0': {'kernel': F},
    'BatchNorm_0': {'scale': T, 'bias': T},
    'Dense_0': {'kernel': F, 'bias': F},
    'classifier': {'kernel': F, 'bias': F},
}


def ones_mask():
  return jax.tree.map(lambda p: np.ones(p.shape, bool), tiny_params())


def with_masks(conv, dense):
  """A mask of the tiny tree: the given kernel masks, every other leaf all True."""
  mask = ones_mask()
  mask['Conv_0']['kernel'] = np.array(conv, bool)
  mask['Dense_0']['kernel'] = np.array(dense, bool)
  return mask


def alive(mask, prunable=PRUNABLE):
  return sum(int(np.sum(m)) for m, r in zip(jax.tree.leaves(mask), jax.tree.leaves(prunable)) if r)


# Rules.


def test_norm_leaves_are_exactly_scale_and_bias_of_norm_layers():
  params = {**tiny_params(), 'Block_0': {'LayerNorm_0': {'scale': f32([1.0]), 'bias': f32([0.0])},
                                         'LayerNorm_1': {'scale': f32([1.0])},
                                         'WeightNormDense_0': {'kernel': f32([[1.0]]), 'scale': f32([1.0])},
                                         'shortcut': {'kernel': f32([[1.0]])}}}
  assert pruning.norm_leaves(params) == {
      **IS_NORM, 'Block_0': {'LayerNorm_0': {'scale': T, 'bias': T}, 'LayerNorm_1': {'scale': T},
                             'WeightNormDense_0': {'kernel': F, 'scale': F}, 'shortcut': {'kernel': F}}}


def test_prunable_leaves_are_kernels_except_classifier():
  assert pruning.prunable_leaves(tiny_params()) == PRUNABLE


def test_prunable_leaves_custom_exclude_regex():
  params = {**tiny_params(), 'Block_0': {'shortcut': {'kernel': f32([[1.0]])}, 'Conv_1': {'kernel': f32([[1.0]])}}}
  assert pruning.prunable_leaves(params, exclude=(r'shortcut', r'^Dense_\d')) == {
      'Conv_0': {'kernel': T},
      'BatchNorm_0': {'scale': F, 'bias': F},
      'Dense_0': {'kernel': F, 'bias': F},
      'classifier': {'kernel': T, 'bias': F},
      'Block_0': {'shortcut': {'kernel': F}, 'Conv_1': {'kernel': T}},
  }
  everything = pruning.prunable_leaves(params, exclude=())
  assert everything['classifier'] == {'kernel': T, 'bias': F}  # Biases stay unprunable with no exclusion.
  assert everything['Dense_0'] == {'kernel': T, 'bias': F}


# Global magnitude pruning.


def test_prune_uses_one_global_threshold():
  # 15 alive -> round(3.0) = 3 go: the three smallest |w| (0.01, 0.03, 0.05), all in Dense_0. A per-layer rule
  # would also take one Conv weight (round(0.2 * 6) = 1), though every Conv weight is below Dense's 0.70.
  new = pruning.prune_global_magnitude(tiny_params(), ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[T, T, T], [T, T, T]], [[T, F, T], [F, T, T], [F, T, T]]), strict=True)


def test_prune_dead_weights_stay_dead_and_are_not_counted():
  mask = with_masks([[T, T, T], [T, T, T]], [[T, F, T], [F, T, T], [F, T, T]])
  # 12 alive -> round(2.4) = 2 go: 0.20 and 0.30 (a dead count of 15 would make it 3).
  second = pruning.prune_global_magnitude(tiny_params(), mask, PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      second, with_masks([[T, T, T], [T, T, T]], [[T, F, F], [F, T, F], [F, T, T]]), strict=True)
  # 10 alive -> 2 go: 0.35 (Dense) and 0.40 (Conv).
  third = pruning.prune_global_magnitude(tiny_params(), second, PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      third, with_masks([[T, T, F], [T, T, T]], [[T, F, F], [F, T, F], [F, T, F]]), strict=True)


def test_prune_dead_weight_with_large_value_stays_dead():
  mask = with_masks([[F, T, T], [T, T, T]], [[F, T, T], [T, T, T], [T, T, T]])  # Kills 0.50 and 0.90.
  # 13 alive -> round(2.6) = 3 go: 0.01, 0.03, 0.05; the dead large weights are not revived.
  new = pruning.prune_global_magnitude(tiny_params(), mask, PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[F, T, T], [T, T, T]], [[F, F, T], [F, T, T], [F, T, T]]), strict=True)


def test_prune_breaks_ties_so_the_exact_count_goes():
  params = tiny_params()
  params['Conv_0']['kernel'] = f32([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
  params['Dense_0']['kernel'] = f32([[-1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
  # All 15 tie: exactly 3 go, the first three in flattened order (Conv_0 comes before Dense_0).
  new = pruning.prune_global_magnitude(params, ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[F, F, F], [T, T, T]], [[T, T, T], [T, T, T], [T, T, T]]), strict=True)


def test_prune_tie_at_the_threshold():
  params = tiny_params()
  params['Conv_0']['kernel'] = f32([[0.5, 0.2, 0.6], [0.7, -0.2, 0.8]])
  params['Dense_0']['kernel'] = f32([[0.9, -0.2, 0.1], [1.0, 1.1, 1.2], [1.3, 1.4, 1.5]])
  # 3 go: 0.1 and two of the three 0.2s (by position: Conv_0[0, 1], Conv_0[1, 1]).
  new = pruning.prune_global_magnitude(params, ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[T, F, T], [T, F, T]], [[T, T, F], [T, T, T], [T, T, T]]), strict=True)
  assert alive(new) == 12


def test_prune_never_touches_classifier_biases_or_norm():
  mask = ones_mask()
  mask['classifier']['kernel'] = np.array([[T, F], [T, T], [F, T]])  # A non-prunable mask is kept as it is.
  for _ in range(6):
    mask = pruning.prune_global_magnitude(tiny_params(), mask, PRUNABLE, 0.2)
  assert alive(mask) == 4  # 15, 12, 10, 8, 6, 5, 4; all the tiny non-prunable leaves survive.
  chex.assert_trees_all_equal(
      (mask['BatchNorm_0'], mask['Dense_0']['bias'], mask['classifier']),
      ({'scale': np.ones(2, bool), 'bias': np.ones(2, bool)}, np.ones(3, bool),
       {'kernel': np.array([[T, F], [T, T], [F, T]]), 'bias': np.ones(2, bool)}),
      strict=True)


def test_prune_repeated_rounds_leave_point_eight_to_the_k():
  rng = np.random.default_rng(0)
  params = {'Conv_0': {'kernel': rng.normal(size=(10, 10, 1, 5)).astype(F32)},
            'Dense_0': {'kernel': rng.normal(size=(25, 20)).astype(F32), 'bias': np.zeros(20, F32)},
            'classifier': {'kernel': rng.normal(size=(20, 3)).astype(F32) * 1e-3, 'bias': np.zeros(3, F32)}}
  prunable = pruning.prunable_leaves(params)
  prune = jax.jit(lambda p, m: pruning.prune_global_magnitude(pruning.apply_mask(p, m), m, prunable, 0.2))
  mask = pruning.full_mask(params)
  # n_k = n_{k-1} - round(0.2 n_{k-1}), from 1000 (0.8^15 * 1000 = 35.2).
  expected = [1000, 800, 640, 512, 410, 328, 262, 210, 168, 134, 107, 86, 69, 55, 44, 35]
  counts = [alive(mask, prunable)]
  for _ in range(15):
    mask = prune(params, mask)
    counts.append(alive(mask, prunable))
  assert counts == expected
  assert np.all(mask['classifier']['kernel']) and np.all(mask['Dense_0']['bias'])


def test_prune_removes_exactly_round_fraction_of_alive_at_scale():
  # 10,485,767 alive -> round(2,097,153.4) = 2,097,153 must go. In float32 (spacing 0.25 there) 0.2 · alive is
  # 2,097,153.5, which rounds to 2,097,154. Off by one for 10 % of alive counts in [5·2^21, 5·2^22), 32 % above.
  n = 10_485_767
  params = {'Dense_0': {'kernel': np.arange(1, n + 1, dtype=F32)}}
  mask = {'Dense_0': {'kernel': np.ones(n, bool)}}
  new = pruning.prune_global_magnitude(params, mask, {'Dense_0': {'kernel': True}}, 0.2)
  assert n - int(np.sum(new['Dense_0']['kernel'])) == 2_097_153


def test_prune_under_jit_with_static_prunable():
  prune = jax.jit(lambda p, m: pruning.prune_global_magnitude(p, m, PRUNABLE, 0.2))
  params = jax.tree.map(jnp.asarray, tiny_params())
  first = prune(params, jax.tree.map(jnp.asarray, ones_mask()))
  chex.assert_trees_all_equal(
      first, with_masks([[T, T, T], [T, T, T]], [[T, F, T], [F, T, T], [F, T, T]]), strict=True)
  second = prune(params, first)
  chex.assert_trees_all_equal(
      second, with_masks([[T, T, T], [T, T, T]], [[T, F, F], [F, T, F], [F, T, T]]), strict=True)
  assert prune._cache_size() == 1  # Masks change values, never shapes or dtypes.  pylint: disable=protected-access


# Signs and signed-mask transfer.


def test_signs():
  params = {'Dense_0': {'kernel': f32([[-0.3, 0.2, 0.0], [0.5, -0.7, 0.0]])}}
  mask = {'Dense_0': {'kernel': np.array([[T, T, T], [F, F, F]])}}
  chex.assert_trees_all_equal(
      pruning.signs(params, mask), {'Dense_0': {'kernel': np.array([[-1, 1, 1], [0, 0, 0]], np.int8)}},
      strict=True)


def test_signed_mask_transfer():
  trained = tiny_params()
  mask = with_masks([[T, F, T], [T, T, F]], [[T, F, T], [F, T, T], [F, T, T]])
  signed = pruning.signs(pruning.apply_mask(trained, mask), mask)
  fresh = {
      'Conv_0': {'kernel': f32([[-2.0, 3.0, 4.0], [5.0, -6.0, 7.0]])},
      'BatchNorm_0': {'scale': f32([-1.5, 0.5]), 'bias': f32([0.25, -0.75])},
      'Dense_0': {'kernel': f32([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0], [7.0, 8.0, -9.0]]),
                  'bias': f32([-0.1, 0.2, 0.3])},
      'classifier': {'kernel': f32([[-1.0, -2.0], [3.0, 4.0], [5.0, -6.0]]), 'bias': f32([-0.5, 0.5])},
  }
  expected = {
      # Trained signs [[+, -, +], [-, +, -]] on |fresh|, pruned entries 0.
      'Conv_0': {'kernel': f32([[2.0, 0.0, 4.0], [-5.0, 6.0, 0.0]])},
      'BatchNorm_0': {'scale': f32([-1.5, 0.5]), 'bias': f32([0.25, -0.75])},  # Fresh, not |fresh| * s.
      # Trained signs [[+, ., +], [., +, -], [., -, +]].
      'Dense_0': {'kernel': f32([[1.0, 0.0, 3.0], [0.0, 5.0, -6.0], [0.0, -8.0, 9.0]]),
                  'bias': f32([0.1, 0.2, -0.3])},  # Trained bias signs +, + (alive zero), -.
      'classifier': {'kernel': f32([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]]), 'bias': f32([0.5, -0.5])},
  }
  result = pruning.signed_mask_transfer(fresh, signed, IS_NORM)
  chex.assert_trees_all_equal(result, expected, strict=True)


def test_signed_transfer_keeps_every_bias_sign_when_fresh_biases_are_nonzero():
  """Under config.init='authors' biases start at ±1/√fan_in, so the signed start carries each trained bias's sign
  (classifier, squeeze-excitation convs, Mixer layers); from zero biases (init='flax') those signs are lost."""
  trained = tiny_params()  # biases: Dense_0 [+, 0 (alive: +), -], classifier [0 (alive: +), -]
  signed = pruning.signs(trained, ones_mask())
  fresh = tiny_params()
  fresh['Dense_0']['bias'] = f32([-0.3, -0.2, 0.1])
  fresh['classifier']['bias'] = f32([-0.05, 0.04])
  result = pruning.signed_mask_transfer(fresh, signed, IS_NORM)
  np.testing.assert_array_equal(result['Dense_0']['bias'], f32([0.3, 0.2, -0.1]))
  np.testing.assert_array_equal(result['classifier']['bias'], f32([0.05, -0.04]))
  zero = jax.tree.map(np.zeros_like, fresh)
  lost = pruning.signed_mask_transfer(zero, signed, IS_NORM)
  assert not np.any(lost['Dense_0']['bias']) and not np.any(lost['classifier']['bias'])


# Masks.


def test_apply_mask_and_full_mask():
  params = tiny_params()
  mask = with_masks([[T, F, T], [F, T, F]], [[F, T, T], [T, T, T], [T, T, F]])
  masked = pruning.apply_mask(params, mask)
  expected = tiny_params()
  expected['Conv_0']['kernel'] = f32([[0.50, 0.0, 0.40], [0.0, 0.55, 0.0]])
  expected['Dense_0']['kernel'] = f32([[0.0, -0.05, 0.30], [-0.01, 0.70, -0.20], [0.03, -0.80, 0.0]])
  chex.assert_trees_all_equal(masked, expected, strict=True)
  chex.assert_trees_all_equal(pruning.apply_mask(params, pruning.full_mask(params)), params, strict=True)
  chex.assert_trees_all_equal(pruning.full_mask(params), ones_mask(), strict=True)


# Norm interpolation.


def init_params():
  params = tiny_params()
  params['BatchNorm_0'] = {'scale': f32([1.0, 1.0]), 'bias': f32([0.0, 0.0])}
  params['Conv_0']['kernel'] = f32([[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]])  # Differs, but is never interpolated.
  return params


def trained_params():
  params = tiny_params()
  params['BatchNorm_0'] = {'scale': f32([2.0, -3.0]), 'bias': f32([0.4, -0.8])}
  return params


def test_interpolate_norm_end_points_are_exact():
  params, init = trained_params(), init_params()
  chex.assert_trees_all_equal(pruning.interpolate_norm(params, init, 0.0, IS_NORM), params, strict=True)
  expected = trained_params()
  expected['BatchNorm_0'] = init['BatchNorm_0']
  chex.assert_trees_all_equal(pruning.interpolate_norm(params, init, 1.0, IS_NORM), expected, strict=True)


def test_interpolate_norm_quarter():
  mixed = pruning.interpolate_norm(trained_params(), init_params(), jnp.float32(0.25), IS_NORM)
  # 0.25 * 1 + 0.75 * 2 = 1.75; 0.25 * 1 + 0.75 * -3 = -2; 0.75 * 0.4 = 0.3; 0.75 * -0.8 = -0.6.
  chex.assert_trees_all_close(mixed['BatchNorm_0'], {'scale': f32([1.75, -2.0]), 'bias': f32([0.3, -0.6])},
                              rtol=1e-6)
  rest = {k: v for k, v in mixed.items() if k != 'BatchNorm_0'}
  chex.assert_trees_all_equal(rest, {k: v for k, v in tiny_params().items() if k != 'BatchNorm_0'}, strict=True)


@pytest.mark.parametrize('alpha', [0.0, 0.25, 0.9])
def test_interpolate_norm_gradient_is_scaled_by_one_minus_alpha(alpha):
  weights = jax.tree.map(lambda p: np.arange(1, p.size + 1, dtype=F32).reshape(p.shape), tiny_params())

  def loss(params):
    mixed = pruning.interpolate_norm(params, init_params(), alpha, IS_NORM)
    return sum(jnp.sum(w * m) for w, m in zip(jax.tree.leaves(weights), jax.tree.leaves(mixed)))

  grads = jax.jit(jax.grad(loss))(trained_params())
  expected = jax.tree.map(lambda w: w.copy(), weights)
  expected['BatchNorm_0'] = {'scale': f32([1.0, 2.0]) * F32(1 - alpha), 'bias': f32([1.0, 2.0]) * F32(1 - alpha)}
  chex.assert_trees_all_close(grads, expected, rtol=1e-6)
  chex.assert_tree_all_finite(grads)


def test_reset_norm():
  expected = trained_params()
  expected['BatchNorm_0'] = {'scale': f32([1.0, 1.0]), 'bias': f32([0.0, 0.0])}
  chex.assert_trees_all_equal(pruning.reset_norm(trained_params(), init_params(), IS_NORM), expected, strict=True)


# Summary.


def test_sparsity_summary():
  mask = with_masks([[T, F, T], [F, T, F]], [[F, T, T], [T, T, T], [T, T, F]])
  mask['classifier']['kernel'] = np.zeros((3, 2), bool)  # Not prunable: not counted.
  summary = pruning.sparsity_summary(mask, PRUNABLE)
  assert summary == {'alive': 10, 'total': 15, 'fraction_left': 10 / 15,
                     'layers': {'Conv_0/kernel': [3, 6], 'Dense_0/kernel': [7, 9]}}
  assert isinstance(summary['alive'], int) and isinstance(summary['layers']['Conv_0/kernel'][0], int)


# Layerwise magnitude pruning and pruning by any score.


def test_prune_layerwise_takes_the_fraction_from_every_leaf():
  # Conv: 6 alive -> round(1.2) = 1 goes (0.40); Dense: 9 alive -> round(1.8) = 2 go (0.01, 0.03). The global rule
  # takes 0.01, 0.03 and 0.05 instead, all in Dense.
  layerwise = pruning.prune_layerwise_magnitude(tiny_params(), ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      layerwise, with_masks([[T, T, F], [T, T, T]], [[T, T, T], [F, T, T], [F, T, T]]), strict=True)
  global_ = pruning.prune_global_magnitude(tiny_params(), ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      global_, with_masks([[T, T, T], [T, T, T]], [[T, F, T], [F, T, T], [F, T, T]]), strict=True)


def test_prune_layerwise_rounds_half_up_per_leaf():
  # Conv: round(0.25 * 6 = 1.5) = 2 go (0.40, 0.42); Dense: round(2.25) = 2 (0.01, 0.03).
  layerwise = pruning.prune_layerwise_magnitude(tiny_params(), ones_mask(), PRUNABLE, 0.25)
  chex.assert_trees_all_equal(
      layerwise, with_masks([[T, T, F], [T, T, F]], [[T, T, T], [F, T, T], [F, T, T]]), strict=True)
  # Globally round(0.25 * 15 = 3.75) = 4 go: 0.01, 0.03, 0.05, 0.20.
  global_ = pruning.prune_global_magnitude(tiny_params(), ones_mask(), PRUNABLE, 0.25)
  chex.assert_trees_all_equal(
      global_, with_masks([[T, T, T], [T, T, T]], [[T, F, T], [F, T, F], [F, T, T]]), strict=True)


def test_prune_layerwise_counts_only_alive_weights_of_the_leaf():
  mask = with_masks([[F, F, T], [F, T, T]], [[F, T, T], [T, F, T], [T, F, T]])  # Kills 0.50, 0.45, 0.60; 0.9, 0.7, 0.8.
  # Conv: 3 alive -> round(0.75) = 1 goes (0.40; counting the 6 would give round(1.5) = 2). Dense: 6 alive ->
  # round(1.5) = 2 go (0.01, 0.03). The dead large weights are not revived.
  new = pruning.prune_layerwise_magnitude(tiny_params(), mask, PRUNABLE, 0.25)
  chex.assert_trees_all_equal(
      new, with_masks([[F, F, F], [F, T, T]], [[F, T, T], [F, F, T], [F, F, T]]), strict=True)


def test_prune_layerwise_breaks_ties_by_position_within_each_leaf():
  params = tiny_params()
  params['Conv_0']['kernel'] = f32([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
  params['Dense_0']['kernel'] = f32([[-1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
  new = pruning.prune_layerwise_magnitude(params, ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[F, T, T], [T, T, T]], [[F, F, T], [T, T, T], [T, T, T]]), strict=True)


def test_prune_layerwise_repeated_rounds_under_jit_keep_non_prunable_masks():
  prune = jax.jit(lambda p, m: pruning.prune_layerwise_magnitude(p, m, PRUNABLE, 0.2))
  mask = jax.tree.map(jnp.asarray, ones_mask())
  mask['classifier']['kernel'] = jnp.array([[T, F], [T, T], [F, T]])
  params = jax.tree.map(jnp.asarray, tiny_params())
  conv, dense = [6], [9]
  for _ in range(5):
    mask = prune(params, mask)
    layers = pruning.sparsity_summary(mask, PRUNABLE)['layers']
    conv.append(layers['Conv_0/kernel'][0])
    dense.append(layers['Dense_0/kernel'][0])
  # Conv: round(1.2), round(1.0), round(0.8), round(0.6) = 1, then round(0.4) = 0. Dense: round(1.8) = 2, then 1s.
  assert conv == [6, 5, 4, 3, 2, 2]
  assert dense == [9, 7, 6, 5, 4, 3]
  assert prune._cache_size() == 1  # pylint: disable=protected-access
  chex.assert_trees_all_equal(
      (mask['BatchNorm_0'], mask['Dense_0']['bias'], mask['classifier']),
      ({'scale': np.ones(2, bool), 'bias': np.ones(2, bool)}, np.ones(3, bool),
       {'kernel': np.array([[T, F], [T, T], [F, T]]), 'bias': np.ones(2, bool)}),
      strict=True)


def test_prune_by_score_removes_lowest_scores_and_checks_scope():
  scores = jax.tree.map(lambda p: -np.abs(p), tiny_params())  # The largest |w| go first.
  # Conv: 1 goes (0.60); Dense: 2 go (0.90, 0.80).
  new = pruning.prune_by_score(scores, ones_mask(), PRUNABLE, 0.2, 'layerwise')
  chex.assert_trees_all_equal(
      new, with_masks([[T, T, T], [F, T, T]], [[F, T, T], [T, T, T], [T, F, T]]), strict=True)
  # Globally 3 go: 0.90, 0.80, 0.70.
  new = pruning.prune_by_score(scores, ones_mask(), PRUNABLE, 0.2)
  chex.assert_trees_all_equal(
      new, with_masks([[T, T, T], [T, T, T]], [[F, T, T], [T, F, T], [T, F, T]]), strict=True)
  with pytest.raises(ValueError, match='scope'):
    pruning.prune_by_score(scores, ones_mask(), PRUNABLE, 0.2, 'per-layer')


# Random pruning.


def medium_mask():
  """A mask of `medium_params`: Conv 250 of 500 alive, Dense 375 of 500, part of the classifier dead."""
  rng = np.random.default_rng(1)
  conv = np.zeros(500, bool)
  conv[rng.permutation(500)[:250]] = True
  dense = np.zeros(500, bool)
  dense[rng.permutation(500)[:375]] = True
  return {'Conv_0': {'kernel': conv.reshape(10, 10, 1, 5)},
          'BatchNorm_0': {'scale': np.ones(5, bool), 'bias': np.ones(5, bool)},
          'Dense_0': {'kernel': dense.reshape(25, 20), 'bias': np.ones(20, bool)},
          'classifier': {'kernel': np.arange(60).reshape(20, 3) % 2 == 0, 'bias': np.ones(3, bool)}}


MEDIUM_PRUNABLE = {'Conv_0': {'kernel': T}, 'BatchNorm_0': {'scale': F, 'bias': F},
                   'Dense_0': {'kernel': T, 'bias': F}, 'classifier': {'kernel': F, 'bias': F}}


def assert_only_prunable_alive_removed(new, old, prunable=MEDIUM_PRUNABLE):
  for n, o, rule in zip(jax.tree.leaves(new), jax.tree.leaves(old), jax.tree.leaves(prunable)):
    n, o = np.asarray(n), np.asarray(o)
    assert n.dtype == bool and n.shape == o.shape
    if rule:
      assert not np.any(n & ~o)  # Nothing revived.
    else:
      np.testing.assert_array_equal(n, o)


def test_prune_random_global_removes_exactly_the_count():
  old = jax.tree.map(jnp.asarray, medium_mask())
  prune = jax.jit(lambda k, m: pruning.prune_random(k, m, MEDIUM_PRUNABLE, 0.2))
  first = prune(jax.random.key(0), old)
  # 625 alive -> round(125.0) = 125 go, 500 stay; the losses fall on both leaves.
  assert alive(first, MEDIUM_PRUNABLE) == 500
  assert_only_prunable_alive_removed(first, old)
  layers = pruning.sparsity_summary(first, MEDIUM_PRUNABLE)['layers']
  assert layers['Conv_0/kernel'][0] < 250 and layers['Dense_0/kernel'][0] < 375
  # 500 alive -> 100 go.
  second = prune(jax.random.key(1), first)
  assert alive(second, MEDIUM_PRUNABLE) == 400
  assert_only_prunable_alive_removed(second, first)
  chex.assert_trees_all_equal(prune(jax.random.key(0), old), first, strict=True)  # Same key, same mask.
  other = prune(jax.random.key(2), old)
  assert alive(other, MEDIUM_PRUNABLE) == 500
  assert not np.array_equal(other['Conv_0']['kernel'], first['Conv_0']['kernel'])
  assert not np.array_equal(other['Dense_0']['kernel'], first['Dense_0']['kernel'])
  assert prune._cache_size() == 1  # pylint: disable=protected-access


def test_prune_random_layerwise_keeps_per_leaf_counts():
  old = medium_mask()
  prune = jax.jit(lambda k, m: pruning.prune_random(k, m, MEDIUM_PRUNABLE, 0.3, scope='layerwise'))
  masks = [prune(k, old) for k in jax.random.split(jax.random.key(0), 3)]
  for new in masks:
    # Conv: 250 - round(75.0) = 175; Dense: 375 - round(112.5) = 375 - 113 = 262.
    layers = pruning.sparsity_summary(new, MEDIUM_PRUNABLE)['layers']
    assert layers == {'Conv_0/kernel': [175, 500], 'Dense_0/kernel': [262, 500]}
    assert_only_prunable_alive_removed(new, old)
  assert not np.array_equal(masks[0]['Conv_0']['kernel'], masks[1]['Conv_0']['kernel'])
  assert not np.array_equal(masks[1]['Dense_0']['kernel'], masks[2]['Dense_0']['kernel'])


def test_prune_random_hand_counts_on_the_tiny_tree():
  mask = with_masks([[F, F, T], [F, T, F]], [[T, T, T], [T, T, T], [T, T, T]])
  for key in jax.random.split(jax.random.key(3), 4):
    # Layerwise: Conv round(0.25 * 2 = 0.5) = 1 goes, Dense round(2.25) = 2. Globally round(0.25 * 11) = 3.
    layerwise = pruning.prune_random(key, mask, PRUNABLE, 0.25, 'layerwise')
    assert pruning.sparsity_summary(layerwise, PRUNABLE)['layers'] == {'Conv_0/kernel': [1, 6],
                                                                        'Dense_0/kernel': [7, 9]}
    assert not np.any(np.asarray(layerwise['Conv_0']['kernel']) & ~mask['Conv_0']['kernel'])
    assert alive(pruning.prune_random(key, mask, PRUNABLE, 0.25)) == 8


def test_prune_random_is_uniform_over_alive_weights():
  keys = jax.random.split(jax.random.key(0), 4000)
  for scope, conv, dense in (('global', 0.2, 0.2), ('layerwise', 1 / 6, 2 / 9)):
    masks = jax.jit(lambda ks: jax.lax.map(lambda k: pruning.prune_random(k, ones_mask(), PRUNABLE, 0.2, scope), ks))(
        keys)
    removed_conv = 1 - np.mean(masks['Conv_0']['kernel'], axis=0)
    removed_dense = 1 - np.mean(masks['Dense_0']['kernel'], axis=0)
    # Each of the 4000 masks loses exactly 3 weights; each weight goes with the same chance, whatever its |w|.
    np.testing.assert_array_equal(
        masks['Conv_0']['kernel'].sum((1, 2)) + masks['Dense_0']['kernel'].sum((1, 2)), np.full(4000, 12))
    np.testing.assert_allclose(removed_conv, np.full((2, 3), conv), atol=0.04)
    np.testing.assert_allclose(removed_dense, np.full((3, 3), dense), atol=0.04)


# Controls: random signs and random masks.

NOT_NORM = jax.tree.map(lambda n: not n, IS_NORM)


def test_random_signs_keeps_zeros_and_norm_leaves():
  mask = with_masks([[T, F, T], [F, T, F]], [[F, T, T], [T, T, T], [T, T, F]])
  signed = pruning.signs(tiny_params(), mask)
  randomise = jax.jit(lambda k, s: pruning.random_signs(k, s, IS_NORM))
  result = randomise(jax.random.key(0), signed)
  for r, s in zip(jax.tree.leaves(result), jax.tree.leaves(signed)):
    r, s = np.asarray(r), np.asarray(s)
    assert r.dtype == np.int8 and r.shape == s.shape
    np.testing.assert_array_equal(r != 0, s != 0)
    assert set(np.unique(r)) <= {-1, 0, 1}
  chex.assert_trees_all_equal(result['BatchNorm_0'], signed['BatchNorm_0'], strict=True)
  chex.assert_trees_all_equal(randomise(jax.random.key(0), signed), result, strict=True)


def test_random_signs_are_balanced_in_every_sign_carrying_leaf():
  rng = np.random.default_rng(0)
  positive = lambda *shape: np.abs(rng.normal(size=shape)).astype(F32) + 0.1
  params = {'Dense_0': {'kernel': positive(100, 100), 'bias': positive(100)},
            'BatchNorm_0': {'scale': positive(100), 'bias': positive(100)},
            'classifier': {'kernel': positive(100, 10), 'bias': positive(10)}}
  is_norm = pruning.norm_leaves(params)
  mask = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  mask['Dense_0']['kernel'] = rng.random((100, 100)) < 0.75
  signed = jax.tree.map(lambda m: m.astype(np.int8), mask)  # pruning.signs(params, mask): all +1 where alive.
  randomise = jax.jit(lambda k, s: pruning.random_signs(k, s, is_norm))
  first, second = randomise(jax.random.key(0), signed), randomise(jax.random.key(1), signed)
  kernel = np.asarray(first['Dense_0']['kernel'])
  np.testing.assert_array_equal(kernel != 0, np.asarray(mask['Dense_0']['kernel']))
  assert 0.45 < np.mean(kernel[kernel != 0] == -1) < 0.55  # About 7,500 alive: half flipped.
  assert 0.4 < np.mean(np.asarray(first['classifier']['kernel']) == -1) < 0.6
  for path in (('Dense_0', 'bias'), ('classifier', 'bias')):  # Biases and the classifier take random signs too.
    leaf = np.asarray(first[path[0]][path[1]])
    assert np.any(leaf == -1) and np.any(leaf == 1)
  np.testing.assert_array_equal(first['BatchNorm_0']['scale'], np.ones(100, np.int8))
  assert not np.array_equal(first['Dense_0']['kernel'], second['Dense_0']['kernel'])
  assert 0.45 < pruning.sign_flips(signed, first, jax.tree.map(lambda n: not n, is_norm))['overall'] < 0.55


def test_random_mask_like_keeps_per_leaf_counts():
  old = medium_mask()
  draw = jax.jit(lambda k, m: pruning.random_mask_like(k, m, MEDIUM_PRUNABLE))
  first, second = draw(jax.random.key(0), old), draw(jax.random.key(1), old)
  for new in (first, second):
    assert pruning.sparsity_summary(new, MEDIUM_PRUNABLE)['layers'] == {'Conv_0/kernel': [250, 500],
                                                                        'Dense_0/kernel': [375, 500]}
    for n, o, rule in zip(jax.tree.leaves(new), jax.tree.leaves(old), jax.tree.leaves(MEDIUM_PRUNABLE)):
      assert n.dtype == bool and n.shape == o.shape
      if rule:
        assert not np.array_equal(n, o)
      else:
        assert np.all(n)  # The partly dead classifier mask comes back all True: never pruned.
  assert not np.array_equal(first['Conv_0']['kernel'], second['Conv_0']['kernel'])
  chex.assert_trees_all_equal(draw(jax.random.key(0), old), first, strict=True)
  assert draw._cache_size() == 1  # pylint: disable=protected-access


def test_random_mask_like_is_uniform():
  mask = with_masks([[T, T, T], [F, F, F]], [[T, T, T], [T, T, F], [F, F, F]])
  masks = jax.jit(lambda ks: jax.lax.map(lambda k: pruning.random_mask_like(k, mask, PRUNABLE), ks))(
      jax.random.split(jax.random.key(0), 4000))  # lax.map: a vmapped threefry takes seconds to compile on CPU.
  np.testing.assert_array_equal(masks['Conv_0']['kernel'].sum((1, 2)), np.full(4000, 3))
  np.testing.assert_array_equal(masks['Dense_0']['kernel'].sum((1, 2)), np.full(4000, 5))
  np.testing.assert_allclose(np.mean(masks['Conv_0']['kernel'], axis=0), np.full((2, 3), 0.5), atol=0.04)
  np.testing.assert_allclose(np.mean(masks['Dense_0']['kernel'], axis=0), np.full((3, 3), 5 / 9), atol=0.04)


# Sign analytics.


def flipped_params():
  """`tiny_params` after some training: see the comments of the sign tests."""
  params = jax.tree.map(np.negative, tiny_params())  # Norm and classifier signs all flip (0.0 -> -0.0 stays +).
  params['Conv_0']['kernel'] = f32([[-0.10, -0.30, 0.0], [0.20, 0.55, 0.0]])
  params['Dense_0'] = {'kernel': f32([[0.80, 0.05, -0.30], [0.01, 0.60, -0.10], [-0.03, -0.70, 0.40]]),
                       'bias': f32([-0.001, -0.5, -0.002])}
  return params


SIGN_MASK_CONV = [[T, T, T], [F, T, T]]
SIGN_MASK_DENSE = [[T, F, T], [F, T, T], [F, T, T]]


def test_sign_changes_over_alive_prunable_weights():
  mask = with_masks(SIGN_MASK_CONV, SIGN_MASK_DENSE)
  # Conv, alive: + -> - flips, - -> - no, + -> alive zero (+) no, + -> + no, - -> alive zero (+) flips: 2 / 5. The
  # dead [1, 0] (- -> +) does not count. Dense, alive: only 0.30 -> -0.30 flips: 1 / 6; its three dead weights all
  # flip but do not count. Norm, biases and classifier are not prunable.
  summary = pruning.sign_changes(tiny_params(), flipped_params(), mask, PRUNABLE)
  assert summary == {'overall': 3 / 11, 'layers': {'Conv_0/kernel': 2 / 5, 'Dense_0/kernel': 1 / 6}}
  same = pruning.sign_changes(tiny_params(), tiny_params(), mask, PRUNABLE)
  assert same == {'overall': 0.0, 'layers': {'Conv_0/kernel': 0.0, 'Dense_0/kernel': 0.0}}


def test_sign_flips_of_inherited_signs_over_every_sign_carrying_leaf():
  mask = with_masks(SIGN_MASK_CONV, SIGN_MASK_DENSE)
  signed = pruning.signs(tiny_params(), mask)
  # Dense bias [+, + (alive zero), -] -> [-, -, -]: 2 / 3. Classifier kernel [[+, -], [+, + (zero)], [-, +]] is
  # negated: all flip but the zero, which becomes -0.0, still +: 5 / 6. Classifier bias [+ (zero), -] -> [+, +]:
  # 1 / 2. Overall (2 + 1 + 2 + 5 + 1) / (5 + 6 + 3 + 6 + 2) = 11 / 22. BatchNorm (all but one flip) is left out.
  summary = pruning.sign_flips(signed, flipped_params(), NOT_NORM)
  assert summary == {'overall': 0.5, 'layers': {'Conv_0/kernel': 2 / 5, 'Dense_0/kernel': 1 / 6,
                                                'Dense_0/bias': 2 / 3, 'classifier/kernel': 5 / 6,
                                                'classifier/bias': 1 / 2}}
  assert pruning.sign_flips(signed, flipped_params(), PRUNABLE) == pruning.sign_changes(
      tiny_params(), flipped_params(), mask, PRUNABLE)


def test_sign_flip_fraction_under_jit():
  mask = with_masks(SIGN_MASK_CONV, SIGN_MASK_DENSE)
  signed = jax.tree.map(jnp.asarray, pruning.signs(tiny_params(), mask))
  params = jax.tree.map(jnp.asarray, flipped_params())
  inherited = jax.jit(lambda s, p: pruning.sign_flip_fraction(s, p, NOT_NORM))(signed, params)
  assert inherited.dtype == jnp.float32 and inherited.shape == ()
  assert float(inherited) == 0.5
  changed = jax.jit(lambda s, p: pruning.sign_flip_fraction(s, p, PRUNABLE))(signed, params)
  assert float(changed) == pytest.approx(3 / 11, rel=1e-6)
  assert float(pruning.sign_flip_fraction(signed, jax.tree.map(jnp.asarray, tiny_params()), NOT_NORM)) == 0.0
