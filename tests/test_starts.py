"""Final-training starts (aws_jax.starts) on a hand-made network: what each takes from the fresh initialisation,
the signed mask and the trained source."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aws_jax import config as config_lib
from aws_jax import pruning, starts, train
from aws_jax.errors import UserError
from conftest import tiny_digits_config


def network(kernel, scale, bias, classifier_bias, mean):
  """A conv kernel, a BatchNorm (ψ: scale and bias; running mean), a classifier with a bias."""
  params = {'Conv_0': {'kernel': jnp.asarray(kernel, jnp.float32)},
            'BatchNorm_0': {'scale': jnp.asarray(scale, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)},
            'classifier': {'kernel': jnp.asarray([[1.0, -1.0]], jnp.float32),
                           'bias': jnp.asarray(classifier_bias, jnp.float32)}}
  batch_stats = {'BatchNorm_0': {'mean': jnp.asarray(mean, jnp.float32), 'var': jnp.ones(2)}}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=(),
                          mask=pruning.full_mask(params), init_params=params, rng=jax.random.PRNGKey(0))


FRESH = network([0.5, -0.25, 0.125, -2.0], [1.0, 1.0], [0.0, 0.0], [0.3, -0.4], [0.0, 0.0])
SOURCE = network([-3.0, 0.0, 4.0, -5.0], [0.2, 1.7], [-0.6, 0.9], [-0.1, 0.2], [7.0, 8.0])


def inputs(source=SOURCE):
  mask = jax.tree.map(lambda p: p != 0, SOURCE.params)  # the source pruned its second weight
  source = source.replace(mask=mask) if source is not None else None
  signed = pruning.signs(SOURCE.params, mask)
  is_norm = pruning.norm_leaves(FRESH.params)
  return starts.StartInputs(fresh=FRESH, signed=signed, source=source, key=jax.random.PRNGKey(3), is_norm=is_norm,
                            prunable=pruning.prunable_leaves(FRESH.params))


def test_signed_keep_norm_by_hand():
  state = starts.get('signed_keep_norm').build(inputs())
  # |w_fresh| · sign(w_source) on the alive weights, 0 where pruned.
  np.testing.assert_array_equal(state.params['Conv_0']['kernel'], [-0.5, 0.0, 0.125, -2.0])
  # ψ of the trained source: scale and bias of every normalization layer.
  np.testing.assert_array_equal(state.params['BatchNorm_0']['scale'], np.float32([0.2, 1.7]))
  np.testing.assert_array_equal(state.params['BatchNorm_0']['bias'], np.float32([-0.6, 0.9]))
  # The classifier bias keeps its fresh magnitude with the source's sign (+0.3 · −1, −0.4 · +1).
  np.testing.assert_array_equal(state.params['classifier']['bias'], np.float32([-0.3, 0.4]))
  # Running statistics fresh, mask from the signs, initial values the fresh network's.
  np.testing.assert_array_equal(state.batch_stats['BatchNorm_0']['mean'], [0.0, 0.0])
  np.testing.assert_array_equal(state.mask['Conv_0']['kernel'], [True, False, True, True])
  np.testing.assert_array_equal(state.init_params['BatchNorm_0']['scale'], [1.0, 1.0])


def test_signed_takes_nothing_of_the_source_but_its_signs():
  signed = starts.get('signed').build(inputs())
  keep_norm = starts.get('signed_keep_norm').build(inputs())
  np.testing.assert_array_equal(signed.params['Conv_0']['kernel'], keep_norm.params['Conv_0']['kernel'])
  np.testing.assert_array_equal(signed.params['BatchNorm_0']['scale'], [1.0, 1.0])  # fresh ψ
  np.testing.assert_array_equal(signed.params['BatchNorm_0']['bias'], [0.0, 0.0])


def test_retrain_is_the_source_and_mask_keeps_fresh_signs():
  retrain = starts.get('retrain').build(inputs())
  np.testing.assert_array_equal(retrain.params['Conv_0']['kernel'], [-3.0, 0.0, 4.0, -5.0])
  np.testing.assert_array_equal(retrain.batch_stats['BatchNorm_0']['mean'], [7.0, 8.0])
  mask = starts.get('mask').build(inputs())
  np.testing.assert_array_equal(mask.params['Conv_0']['kernel'], [0.5, 0.0, 0.125, -2.0])


@pytest.mark.parametrize('name', [s.name for s in starts.STARTS.values() if s.needs_source])
def test_starts_that_need_the_source_are_refused_from_a_signs_file(name):
  with pytest.raises(UserError, match=f'final.modes has {name}, which needs the trained source network'):
    config_lib.validate(tiny_digits_config(**{'final.signed_mask': 'x.signs', 'final.modes': ('signed', name)}))


def test_every_start_is_a_config_choice_and_has_a_color():
  assert set(config_lib.MODES) == set(starts.STARTS)
  assert len({s.color for s in starts.STARTS.values()}) == len(starts.STARTS)
