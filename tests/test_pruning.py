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
