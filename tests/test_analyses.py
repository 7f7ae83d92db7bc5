"""The registered analyses on hand-made networks: what each computes, and how the registry stores and merges it."""
import types

import jax.numpy as jnp
import pytest

from aws_jax import pruning
from aws_jax.rundir import RunDir


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


@pytest.fixture
def registered():
  """Registers analyses for one test, and takes them out again."""
  from aws_jax import analyses  # pylint: disable=import-outside-toplevel
  added = []

  def add(analysis):
    added.append(analysis.name)
    return analyses.register(analysis)

  yield add
  for name in added:
    del analyses.ANALYSES[name]


def fake_setup(**config):
  from aws_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  base = config_lib.base_config()
  base.update(config)
  return types.SimpleNamespace(config=base, streamed=False)


def test_a_stored_result_is_read_back_and_recomputed_only_when_it_no_longer_holds(tmp_path, registered):
  from aws_jax import analyses  # pylint: disable=import-outside-toplevel
  calls = []

  def compute(setup, network):
    calls.append(network.name)
    return {'peers_seen': list(network.peers), 'count': float(len(calls))}

  registered(analyses.Analysis('peer_count', 'final', compute, key='count', category='eval',
                               current=lambda stored, network: stored['peers_seen'] == list(network.peers)))
  rundir, setup = RunDir(str(tmp_path)), fake_setup(analyses=('peer_count',))
  first = analyses.analyse(setup, rundir, 'final', analyses.Network('n', None, peers=('a',)))
  again = analyses.analyse(setup, rundir, 'final', analyses.Network('n', None, peers=('a',)))
  assert calls == ['n'] and first['count'] == again['count'] == 1.0  # stored once, read back
  widened = analyses.analyse(setup, rundir, 'final', analyses.Network('n', None, peers=('a', 'b')))
  assert calls == ['n', 'n'] and widened['count'] == 2.0  # its peers changed: computed again
  assert analyses.stored(rundir, 'n')['peers_seen'] == ['a', 'b']
  skipped = analyses.analyse(fake_setup(analyses=('psi',)), rundir, 'final', analyses.Network('m', None))
  assert skipped == {} and calls == ['n', 'n']  # not selected by config.analyses


def test_a_pair_is_stored_once_whichever_order_it_is_asked_in(tmp_path, monkeypatch):
  from aws_jax import analyses, barrier, train  # pylint: disable=import-outside-toplevel
  curves = []

  def error_curve(model, a, b, data, points, chunk, impl):
    curves.append((a['params']['w'].tolist(), b['params']['w'].tolist()))
    return {'barrier': 1.5, 'curve': [0.0, 1.5, 0.0], 'test_error': [10.0, 11.5, 10.0]}

  monkeypatch.setattr(barrier, 'error_curve', error_curve)
  monkeypatch.setattr(analyses, 'path_data', lambda setup: None)
  state = lambda w: train.TrainState(step=0, params={'w': jnp.array([w])}, batch_stats={}, opt_state=None,
                                     mask={'w': jnp.array([True])}, init_params=None, rng=None)
  states = {'x': state(1.0), 'y': state(2.0)}
  rundir, setup = RunDir(str(tmp_path)), types.SimpleNamespace(config=fake_setup().config, model=None)
  for name, other in (('y', 'x'), ('x', 'y')):
    network = analyses.Network(name, states[name], rundir=rundir, load=states.__getitem__)
    assert analyses.pair_curve(setup, network, other)['barrier'] == 1.5
  assert curves == [([1.0], [2.0])]  # measured once, from the first name (α = 0) to the second
  assert [c['a'] + c['b'] for c in analyses.stored_pairs(rundir)] == ['xy']


def test_a_newly_registered_analysis_reaches_results_and_study_csv(tmp_path, registered):
  """One entry, no other edit: its fields reach the run's records, study.csv's columns and the printed line."""
  from aws_jax import analyses  # pylint: disable=import-outside-toplevel
  from aws_jax.study import report  # pylint: disable=import-outside-toplevel
  registered(analyses.Analysis('width', 'final', lambda setup, network: {'width_score': 0.25}, key='width_score',
                               category='eval', fields=(analyses.Field('width_score', 'width score'),),
                               line=lambda record: f'width {record["width_score"]:.2f}'))
  rundir = RunDir(str(tmp_path))
  found = analyses.analyse(fake_setup(), rundir, 'final', analyses.Network('signed_round1_seed2', None))
  assert found['width_score'] == 0.25 and analyses.stored(rundir, 'signed_round1_seed2')['width_score'] == 0.25
  assert 'width 0.25' in analyses.line_parts(found, 'final')
  assert report.csv_fields()[-3:] == ('width_score', 'epochs', 'wall_s')
  config = fake_setup(**{'study': {**fake_setup().config.study.to_dict(), 'methods': ('aws',),
                                   'starts': ('signed',), 'seeds': (2,)}}).config
  results = {'final': [{'mode': 'signed', 'source_round': config.prune.rounds, 'seed': 2, 'fraction_left': 0.1,
                        'test_accuracy': 0.9, 'test_loss': 0.3, 'train_accuracy': 1.0, 'epochs': 1, 'wall_s': 1.0,
                        **found}]}
  assert report.rows_of(config, 'aws', results)[0]['width_score'] == 0.25
