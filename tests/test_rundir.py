"""The run directory's layout and the config fingerprint across aws_jax versions."""
import json
import os

import pytest

from aws_jax import config as config_lib
from aws_jax import protocol
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir
from conftest import tiny_digits_config


def test_every_path_lies_under_the_root(tmp_path):
  rundir = RunDir(str(tmp_path / 'run'))
  paths = [rundir.config, rundir.results, rundir.metrics, rundir.tensorboard, rundir.lock, rundir.barriers,
           rundir.checkpoints('prune'), rundir.checkpoints('rewind'),
           rundir.checkpoints(rundir.final_name('signed', 3, 2)), rundir.partial('round 1'),
           rundir.analysis('round1', 'psi_reset_barrier')]
  assert len(set(paths)) == len(paths)
  assert all(p.startswith(rundir.root + os.sep) for p in paths)
  assert rundir.relative(rundir.checkpoints('prune')) == os.path.join('checkpoints', 'prune')
  assert rundir.relative('/elsewhere/x') == '/elsewhere/x'
  assert RunDir.final_name('signed', 3, 2) == 'signed_round3_seed2'


def test_a_key_added_later_is_no_change_at_its_legacy_value(monkeypatch):
  config = tiny_digits_config()
  current = config_lib.fingerprint(config)
  assert current['schema'] == config_lib.SCHEMA
  earlier = {k: v for k, v in current.items() if k not in ('schema', 'prune.scope')}  # before prune.scope existed
  assert config_lib.changed_keys(earlier, current) == []
  monkeypatch.setitem(config_lib.LEGACY_DEFAULTS, 'prune.scope', 'layerwise')  # as if runs were layerwise before
  assert config_lib.changed_keys(earlier, current) == ['prune.scope']
  message = config_lib.refusal('W', earlier, current, ['prune.scope'])
  assert "before prune.scope existed; resume it with --config.prune.scope=layerwise" in message
  assert config_lib.changed_keys({**current, 'removed.key': 1}, current) == []  # a key aws_jax dropped decides nothing


def test_a_workdir_of_an_earlier_aws_jax_resumes_into_the_final_stage(tmp_path, monkeypatch):
  """A pruning stage whose config.json predates the schema and a key: the final stage runs on it; with that key's
  legacy value elsewhere than its default, the workdir is refused on one line naming the flag."""
  workdir = str(tmp_path / 'run')
  common = {'prune.rounds': 1, 'prune.warmup_epochs': 1, 'prune.round_epochs': 1, 'barrier.psi_reset': False,
            'final.epochs': 1, 'final.modes': ('signed',)}
  protocol.run(tiny_digits_config(**common, stage='prune'), workdir)
  path = RunDir(workdir).config
  with open(path) as f:
    recorded = json.load(f)
  older = {k: v for k, v in recorded.items() if k not in ('schema', 'prune.rewind_epoch')}
  with open(path, 'w') as f:
    json.dump(older, f)
  monkeypatch.setitem(config_lib.LEGACY_DEFAULTS, 'prune.rewind_epoch', 3)
  with pytest.raises(UserError, match='before prune.rewind_epoch existed; resume it with '
                                      '--config.prune.rewind_epoch=3'):
    protocol.run(tiny_digits_config(**common, stage='final'), workdir)
  monkeypatch.undo()
  results = protocol.run(tiny_digits_config(**common, stage='final'), workdir)
  assert [f['mode'] for f in results['final']] == ['signed'] and len(results['rounds']) == 2


def test_a_key_added_later_that_decides_nothing_for_this_run_is_no_change():
  """drop_connect matters for EfficientNet only, normalization for datasets with the reference's constants: a record
  from before they existed is refused for them only where they apply."""
  added = ('init', 'drop_connect', 'normalization', 'barrier.reestimate')
  digits = config_lib.fingerprint(tiny_digits_config())
  assert config_lib.changed_keys({k: v for k, v in digits.items() if k not in added}, digits) == ['init']
  cifar = {**digits, 'model': 'efficientnet_b0', 'dataset': 'cifar100'}
  assert config_lib.changed_keys({k: v for k, v in cifar.items() if k not in added}, cifar) == [
      'drop_connect', 'init', 'normalization']


def test_the_datasets_with_the_references_constants_agree_with_the_constants():
  from aws_jax import data  # pylint: disable=import-outside-toplevel
  from aws_jax.datasets import FACTS  # pylint: disable=import-outside-toplevel
  assert {name for name, facts in FACTS.items() if facts.authors_constants} == set(data.AUTHORS_NORMALIZATION)


def test_a_workdir_from_before_norm_weight_decay_resumes_as_decayed():
  current = config_lib.fingerprint(config_lib.base_config())
  earlier = {k: v for k, v in current.items() if k != 'optimizer.norm_weight_decay'}
  assert config_lib.changed_keys(earlier, current) == []  # the authors' rule, every parameter decayed
  assert config_lib.changed_keys(earlier, {**current, 'optimizer.norm_weight_decay': False}) == \
      ['optimizer.norm_weight_decay']
