"""The registered analyses on hand-made networks: what each computes, and how the registry stores and merges it."""
import jax.numpy as jnp
import pytest

from aws_jax import pruning


def test_psi_statistics_of_a_hand_made_tree():
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))},
            'bn1': {'scale': jnp.array([0.1, 0.3]), 'bias': jnp.array([-1.0, 3.0])},
            'bn2': {'scale': jnp.array([1.0, 1.0, 0.15, 0.05]), 'bias': jnp.zeros(4)},
            'bn3': {'scale': jnp.array([2.0]), 'bias': jnp.array([-0.5])}}
  found = pruning.psi_statistics(params, pruning.norm_leaves(params))
  assert found['layers'] == {'bn1': {'gamma_mean': pytest.approx(0.2), 'beta_abs_mean': 2.0},
                             'bn2': {'gamma_mean': pytest.approx(0.55), 'beta_abs_mean': 0.0},
                             'bn3': {'gamma_mean': 2.0, 'beta_abs_mean': 0.5}}
  assert found['gamma_median'] == pytest.approx(0.55)  # of the layers' means 0.2, 0.55, 2.0
  assert found['gamma_below'] == pytest.approx(3 / 7)  # 0.1, 0.15, 0.05 of the 7 γ entries


def test_psi_statistics_without_normalization_layers():
  assert pruning.psi_statistics({'dense': {'kernel': jnp.ones(2)}}, {'dense': {'kernel': False}}) == {'layers': {}}
