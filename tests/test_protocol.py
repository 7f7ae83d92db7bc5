"""End to end on digits: the protocol's results, checkpoints and reruns; bad input refused (kills: test_faults)."""
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from aws_jax import config as config_lib
from aws_jax import analyses, engine, loop, protocol, pruning, reporting, stages
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir
from conftest import run_cli, tensorboard_scalars, tiny_digits_config, without_times

pytestmark = pytest.mark.xdist_group('protocol')  # its module-scoped fixtures: one worker builds them once


def expected_alive(total: int, rounds: int) -> list[int]:
  alive = [total]
  for _ in range(rounds):
    alive.append(alive[-1] - int(np.round(0.2 * alive[-1])))
  return alive


# The module's run trains on all of digits' training images: its accuracies are asserted (the dense warm-up learns
# digits; the signed transfer, calibrated on them, ends close to dense). The tests that go on in its workdir do too.
ALL_IMAGES = {'train_examples': 0}


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """One whole tiny AWS protocol on digits (all three final modes), run in-process."""
  workdir = str(tmp_path_factory.mktemp('digits'))
  config = tiny_digits_config(**ALL_IMAGES)
  return workdir, config, protocol.run(config, workdir)


def restore_round(workdir, config, round_index):
  setup = engine.make_setup(config)
  tx = setup.optimizer('constant', config.prune.round_epochs)
  checkpoints = Checkpoints(RunDir(workdir).checkpoints('prune'))
  state = checkpoints.restore(round_index, jax.eval_shape(lambda: setup.fresh_state(config.seed, tx)))
  checkpoints.close()
  return setup, state


def test_rounds_follow_the_pruning_schedule(digits_run):
  workdir, config, results = digits_run
  rounds = results['rounds']
  assert [r['round'] for r in rounds] == list(range(config.prune.rounds + 1))
  setup, state = restore_round(workdir, config, config.prune.rounds)
  total = pruning.sparsity_summary(state.mask, setup.prunable)['total']
  alive = expected_alive(total, config.prune.rounds)
  np.testing.assert_allclose([r['fraction_left'] for r in rounds], np.array(alive) / total, rtol=0, atol=1e-12)
  np.testing.assert_allclose([r['fraction_left'] for r in rounds], 0.8 ** np.arange(len(rounds)), atol=1e-4)
  for r in rounds:
    assert 0 <= r['test_accuracy'] <= 1 and 0 <= r['train_accuracy'] <= 1
  assert rounds[0]['test_accuracy'] > 0.9  # the dense warm-up learned digits


def test_checkpoints_hold_sparse_weights_and_their_signed_mask(digits_run):
  workdir, config, _ = digits_run
  setup, state = restore_round(workdir, config, config.prune.rounds)
  for p, m, rule in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.mask),
                        jax.tree.leaves(setup.prunable)):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    if not rule:
      assert np.all(np.asarray(m))
  # The classifier, biases and norm parameters are never pruned.
  assert np.all(np.asarray(state.mask['classifier']['kernel']))


def test_final_modes_run_and_signed_transfer_is_close_to_dense(digits_run):
  _, config, results = digits_run
  final = results['final']
  assert [(f['mode'], f['seed'], f['source_round']) for f in final] == [
      ('signed', 2, 3), ('mask', 2, 3), ('retrain', 2, 3)]
  for f in final:
    assert f['fraction_left'] == pytest.approx(results['rounds'][-1]['fraction_left'])
    assert f['epochs'] == config.final.epochs
  dense = results['rounds'][0]['test_accuracy']
  signed = final[0]['test_accuracy']
  # Calibrated on this tiny protocol (51 % of weights left) over pruning seeds 1-4 x final seeds 11, 12:
  # the signed transfer ended between 0.56 points below and 0.56 points above the dense network.
  assert signed >= dense - 0.02, (signed, dense)
  with open(RunDir(digits_run[0]).results) as f:
    assert json.load(f) == results


def test_signed_transfer_starts_from_fresh_magnitudes_and_trained_signs(digits_run):
  workdir, config, _ = digits_run
  setup, source = restore_round(workdir, config, config.prune.rounds)
  tx = setup.optimizer('step', config.final.epochs)
  fresh = setup.fresh_state(5, tx)
  start = stages.start_state(setup, 'signed', pruning.signs(source.params, source.mask), 5, tx)
  trained_signs = pruning.signs(source.params, source.mask)
  for p, f, s, norm in zip(jax.tree.leaves(start.params), jax.tree.leaves(fresh.params),
                           jax.tree.leaves(trained_signs), jax.tree.leaves(setup.is_norm)):
    expected = np.asarray(f) if norm else np.abs(np.asarray(f)) * np.asarray(s)
    np.testing.assert_array_equal(np.asarray(p), expected)
  jax.tree.map(np.testing.assert_array_equal, start.batch_stats, fresh.batch_stats)
  jax.tree.map(np.testing.assert_array_equal, start.mask, source.mask)


def test_results_sum_each_networks_own_seconds_and_its_analyses(digits_run):
  """A record's time account in results.json is its checkpointed summary's plus its stored analyses', per category
  (the re-estimation's evaluation and compilation add to the training's, not replace them)."""
  workdir, _, results = digits_run
  rundir = RunDir(workdir)
  summaries = stages.saved_summaries(rundir.checkpoints('prune'))
  for record, summary in zip(results['rounds'], summaries):
    stored = analyses.stored(rundir, stages.round_name(record['round']))
    assert summary.get('time_train_s', 0) > 0 and stored  # both sides account for something
    for key in {*summary, *stored}:
      if key.startswith('time_') and key.endswith('_s'):
        assert record[key] == pytest.approx(summary.get(key, 0.0) + stored.get(key, 0.0)), key
  assert any(k in s and k in analyses.stored(rundir, stages.round_name(s['round']))
             for s in summaries for k in ('time_eval_s', 'time_compile_s'))  # a category on both sides was summed


def test_metrics_and_tensorboard_are_written(digits_run):
  workdir, config, _ = digits_run
  with open(RunDir(workdir).metrics) as f:
    records = [json.loads(line) for line in f]
  epochs = (config.prune.warmup_epochs + config.prune.rounds * config.prune.round_epochs
            + 3 * config.final.epochs)
  assert len(records) == epochs
  assert {'phase', 'epoch', 'train_loss', 'train_accuracy', 'test_accuracy', 'test_loss'} <= set(records[0])
  scalars = tensorboard_scalars(RunDir(workdir).tensorboard)
  assert {('round_0', 'test_accuracy'), ('round_3', 'train_loss'), ('final_signed_round3_seed2', 'train_loss')} <= set(
      scalars)
  assert len(scalars['round_3', 'train_loss']) == config.prune.round_epochs  # one point per epoch


def test_final_stage_alone_reuses_the_pruning_checkpoints(digits_run, tmp_path):
  workdir, config, results = digits_run
  config = tiny_digits_config(stage='final', **{'final.source_round': 1, 'final.modes': ('mask',)}, **ALL_IMAGES)
  again = protocol.run(config, workdir)
  assert again['rounds'] == results['rounds']
  modes = [(f['mode'], f['source_round']) for f in again['final']]
  assert ('mask', 1) in modes and ('signed', 3) in modes  # earlier final runs stay in results.json


def test_results_count_each_checkpoints_own_write(digits_run, tmp_path):
  """The seconds of writing a round's or a final training's checkpoint (which that checkpoint cannot hold) are in its
  results.json record, on top of what its saved summary counted before the write; a run directory written before
  they were recorded still gives its results."""
  workdir, config, _ = digits_run
  rundir = RunDir(workdir)
  results = stages.collect_results(rundir, config.final.epochs)  # as now: other tests of the module add finals
  for record, summary in zip(results['rounds'], stages.saved_summaries(rundir.checkpoints('prune'))):
    assert record.get('time_checkpoint_s', 0.0) > summary.get('time_checkpoint_s', 0.0), record
  assert results['final']
  for record in results['final']:
    name = RunDir.final_name(record['mode'], record['source_round'], record['seed'])
    summary = stages.saved_summaries(rundir.checkpoints(name))[-1]
    assert record['time_checkpoint_s'] > summary.get('time_checkpoint_s', 0.0), record
  old = tmp_path / 'old'
  shutil.copytree(workdir, old)
  for path in old.glob(f'analyses/*/{stages.CHECKPOINT_RECORD}.json'):
    path.unlink()
  again = stages.collect_results(RunDir(str(old)), config.final.epochs)
  assert without_times(again) == without_times(results)
  for before, record in zip(again['rounds'] + again['final'], results['rounds'] + results['final']):
    assert before.get('time_checkpoint_s', 0.0) < record['time_checkpoint_s']


def test_finals_without_retrain_leave_no_empty_checkpoint_directories(digits_run, tmp_path):
  """Two seeds of one start, without the `retrain` networks the LMC barrier would compare them to: only the trained
  networks get checkpoint directories, each with its finished checkpoint."""
  workdir = tmp_path / 'run'
  shutil.copytree(digits_run[0], workdir)
  config = tiny_digits_config(stage='final', **{'final.modes': ('signed',), 'final.seeds': (2, 3)}, **ALL_IMAGES)
  results = protocol.run(config, str(workdir))
  assert ('signed', 3) in [(f['mode'], f['seed']) for f in results['final']]
  root = os.path.dirname(RunDir(str(workdir)).checkpoints('x'))
  assert 'signed_round3_seed3' in os.listdir(root) and 'retrain_round3_seed3' not in os.listdir(root)
  for name in os.listdir(root):
    assert str(config.final.epochs) in os.listdir(os.path.join(root, name)), name


# --- Bad input: one line on stderr, a non-zero exit, nothing already written lost. -------------------------------

def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr)
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, result.stderr
  assert 'Traceback' not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize('flag, fragments', [
    ('--config.prune.roundz=3', ('unknown config key', 'rounds')),
    ('--config.prune.rounds=abc', ('--config.prune.rounds',)),
    ('--config.prune.fraction=1.5', ('fraction', 'between 0 and 1')),
])
def test_bad_command_line_is_refused_on_one_line(tmp_path, flag, fragments):
  result = run_cli(tmp_path / 'run', flag)
  assert_one_line_error(result, *fragments)
  assert not os.path.exists(RunDir(tmp_path / 'run').checkpoint_root)


@pytest.mark.parametrize('overrides, fragments', [
    ({'prune.fraction': 0.0}, ('fraction',)),
    ({'final.source_round': 7}, ('source_round=7', 'never reached')),
    ({'model': 'resnet7'}, ('resnet7', 'vgg16')),
    ({'dataset': 'imagenet'}, ('imagenet', 'cifar10')),
    ({'final.modes': ('signed', 'random')}, ('random', 'mask')),
    ({'optimizer.lr': -1.0}, ('optimizer.lr',)),
    ({'seed': -3}, ('--config.seed=-3', 'non-negative integers')),  # numpy's PRNG would refuse it mid-run
    ({'final.seeds': (2, -1)}, ('final.seeds=(2, -1)', 'non-negative')),
    ({'study.pruning_seeds': (1, 2.5)}, ('study.pruning_seeds=(1, 2.5)', 'non-negative integers')),
])
def test_bad_config_values_are_refused(overrides, fragments):
  with pytest.raises(UserError) as error:
    config_lib.validate(tiny_digits_config(**overrides))
  assert all(fragment in str(error.value) for fragment in fragments), str(error.value)


def test_workdir_of_another_config_is_refused_unless_overwrite(digits_run, tmp_path):
  workdir = digits_run[0]
  before = open(RunDir(workdir).results).read()
  result = run_cli(workdir, '--config.prune.fraction=0.3', '--config.train_examples=0')
  assert_one_line_error(result, 'prune.fraction', 'overwrite')
  assert open(RunDir(workdir).results).read() == before


def test_overwrite_replaces_the_old_run(digits_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(digits_run[0], workdir)
  result = run_cli(workdir, '--config.stage=prune', '--config.prune.rounds=1', '--config.prune.fraction=0.5',
                   '--config.overwrite=True')
  assert result.returncode == 0, result.stderr
  results = json.loads(pathlib.Path(RunDir(workdir).results).read_text())
  assert [r['fraction_left'] for r in results['rounds']] == pytest.approx([1.0, 0.5], abs=1e-4)
  assert results['final'] == [] and not RunDir(workdir).finals


def test_final_stage_from_a_round_never_reached(tmp_path):
  result = run_cli(tmp_path / 'fresh', '--config.stage=final')
  assert_one_line_error(result, 'round 3 was never reached', 'stage')


def test_checkpoint_of_another_model_is_refused(digits_run):
  workdir, config, _ = digits_run
  other = tiny_digits_config(model='resnet20', **ALL_IMAGES)
  setup = engine.make_setup(other)
  tx = setup.optimizer('constant', other.prune.round_epochs)
  checkpoints = Checkpoints(RunDir(workdir).checkpoints('prune'))
  with pytest.raises(UserError, match='does not match this model'):
    checkpoints.restore(0, jax.eval_shape(lambda: setup.fresh_state(1, tx)))
  checkpoints.close()


def test_nan_loss_stops_with_a_clear_error(tmp_path):
  config = tiny_digits_config()
  setup = engine.make_setup(config)
  tx = setup.optimizer('step', config.final.epochs)
  step_fn = setup.step('step', config.final.epochs, aws=False)

  def poisoned_step(state, images, labels, indices):
    state, metrics = step_fn(state, images, labels, indices)
    return state, {**metrics, 'loss': metrics['loss'] * np.nan}

  log = reporting.MetricsLog(RunDir(str(tmp_path)))
  with pytest.raises(UserError, match='loss became nan in final, epoch 1.*lower --config.optimizer.lr'):
    loop.train_epochs(setup, poisoned_step, [setup.fresh_state(1, tx)], [loop.Member(1, 'final')], phase=0,
                      epochs=range(2), log=log)
  log.close()
  result = run_cli(tmp_path / 'diverged', '--config.optimizer.lr=1e30')
  assert_one_line_error(result, 'loss became', 'round 0, epoch 1', 'lower --config.optimizer.lr')
  assert os.path.exists(RunDir(tmp_path / 'diverged').config)
