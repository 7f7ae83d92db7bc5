"""Faults a user meets: bad input answered at once on one line, kills at random moments, a full disk, a busy workdir."""
import errno
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from aws_jax import protocol, reporting, stages
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError
from aws_jax.rundir import Lock, RunDir
from aws_jax.signs.export import restore_signs
from conftest import (REPO, SUBPROCESS_TIMEOUT, cli_command, run_cli, tensorboard_scalars, tiny_digits_config,
                      without_times)
from test_protocol import assert_one_line_error

# A short run (8 epochs of 22 steps: all of digits' training images) with a checkpoint every 10 steps, many moments to
# kill at: no ψ-reset barriers, one final start.
FAULT_FLAGS = ('--config.train_examples=0', '--config.prune.warmup_epochs=2', '--config.prune.rounds=2',
               '--config.prune.round_epochs=1', '--config.barrier.psi_reset=False', '--config.final.modes=("signed",)',
               '--config.final.epochs=4', '--config.checkpoint_every_steps=10')


def test_bad_input_is_answered_before_jax_is_imported(tmp_path):
  """Config, flag and workdir errors need no JAX: a stand-in `jax` that fails on import proves it is never loaded."""
  fake = tmp_path / 'fake'
  (fake / 'jax').mkdir(parents=True)
  (fake / 'jax' / '__init__.py').write_text('raise ImportError("jax imported before the input was checked")\n')
  (tmp_path / 'a_file').write_text('')
  env = {**os.environ, 'PYTHONPATH': str(fake)}
  cases = [(tmp_path / 'w', ['--config.prune.fraction=2'], 'between 0 and 1'),
           (tmp_path / 'w', ['--config.nokey=1'], 'unknown config key'),
           (tmp_path / 'w', ['--config.model=resnet7'], 'resnet7'),
           (tmp_path / 'a_file', [], 'is a file'),
           ('/proc/aws_jax_test/run', [], 'cannot be written')]
  for workdir, flags, fragment in cases:
    result = subprocess.run(cli_command(workdir, *flags), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT)
    assert_one_line_error(result, fragment)
    assert 'jax imported' not in result.stderr


def test_help_lists_the_config_keys_and_exits_0():
  result = subprocess.run([sys.executable, '-m', 'aws_jax.main', '--help'], cwd=REPO, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert '--config.prune.fraction=0.2' in result.stdout
  assert 'of the alive weights removed per round' in result.stdout
  assert '--config.checkpoint_every_steps=0' in result.stdout


def test_a_workdir_in_use_is_refused(tmp_path):
  with Lock(RunDir(str(tmp_path))):
    result = run_cli(tmp_path)
    with pytest.raises(UserError, match='in use by a running aws_jax process'):
      protocol.run(tiny_digits_config(), str(tmp_path))
  assert_one_line_error(result, 'in use by a running aws_jax process', f'pid {os.getpid()}')


def test_a_failed_checkpoint_write_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
  """A full disk while saving round 1: a one-line UserError naming the intact checkpoint, and the rerun resumes."""
  config = tiny_digits_config(**{'prune.warmup_epochs': 1, 'prune.rounds': 1, 'prune.round_epochs': 1,
                                 'barrier.psi_reset': False, 'stage': 'prune'})
  real_save = ocp.CheckpointManager.save

  def disk_full_after_round_0(self, step, *args, **kwargs):
    if step > 0:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full_after_round_0)
  with pytest.raises(UserError, match='could not write checkpoint 1 .*No space left.*resumes from checkpoint 0'):
    protocol.run(config, str(tmp_path))
  monkeypatch.undo()
  assert [s['round'] for s in stages.saved_summaries(RunDir(str(tmp_path)).checkpoints('prune'))] == [0]
  results = protocol.run(config, str(tmp_path))
  assert [r['round'] for r in results['rounds']] == [0, 1]


def test_a_run_that_saved_nothing_can_be_rerun_with_another_config(tmp_path):
  """The NaN message says to lower the learning rate and rerun: with no checkpoint written, that rerun is accepted."""
  diverged = run_cli(tmp_path, '--config.optimizer.lr=1e30')
  assert_one_line_error(diverged, 'loss became', 'lower --config.optimizer.lr')
  config = tiny_digits_config(**{'prune.warmup_epochs': 1, 'prune.rounds': 0, 'stage': 'prune',
                                 'barrier.psi_reset': False, 'train_examples': 0})
  results = protocol.run(config, str(tmp_path))
  assert results['rounds'][0]['test_accuracy'] > 0.5


def test_metrics_log_keeps_one_record_per_epoch_across_attempts(tmp_path):
  first = reporting.MetricsLog(RunDir(str(tmp_path)))
  for epoch, step in ((1, 10), (2, 20), (3, 30)):
    first.write({'phase': 'round 0', 'epoch': epoch, 'test_accuracy': epoch / 10}, step)
  first.close()  # killed after epoch 3; the last checkpoint was at epoch 1
  second = reporting.MetricsLog(RunDir(str(tmp_path)))
  for epoch, step in ((2, 20), (3, 30), (4, 40)):
    second.write({'phase': 'round 0', 'epoch': epoch, 'test_accuracy': epoch / 100}, step)
  second.write({'phase': 'round 1', 'epoch': 1, 'test_accuracy': 0.5}, 50)
  second.close()
  records = [json.loads(line) for line in pathlib.Path(RunDir(tmp_path).metrics).read_text().splitlines()]
  assert [(r['phase'], r['epoch'], r['test_accuracy']) for r in records] == [
      ('round 0', 1, 0.1), ('round 0', 2, 0.02), ('round 0', 3, 0.03), ('round 0', 4, 0.04), ('round 1', 1, 0.5)]
  assert tensorboard_scalars(RunDir(tmp_path).tensorboard)['round_0', 'test_accuracy'] == pytest.approx(
      {10: 0.1, 20: 0.02, 30: 0.03, 40: 0.04})


def finished_checkpoints(workdir) -> set:
  root = os.path.dirname(RunDir(str(workdir)).checkpoints('prune'))
  return {path for path, _, _ in os.walk(root) if os.path.basename(path).isdigit()}


def kill_at_random_moments_until_done(workdir, rng: random.Random) -> int:
  """Runs the CLI in `workdir`, killing it (SIGKILL or SIGTERM) at a random moment after each new checkpoint and
  rerunning it, until a run finishes; returns the number of kills."""
  kills = 0
  while True:
    seen = finished_checkpoints(workdir)
    process = subprocess.Popen(cli_command(workdir, *FAULT_FLAGS), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while process.poll() is None and finished_checkpoints(workdir) <= seen:
      time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.5))
    if process.poll() is not None:
      assert process.returncode == 0, process.stderr.read()
      return kills
    signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    kills += 1
    if process.returncode == 128 + signal.SIGTERM:  # else it came before training began or after it ended
      assert 'stopped by SIGTERM' in stderr and 'rerun the same command to resume' in stderr, stderr


@pytest.mark.long
def test_killed_at_random_moments_ends_like_an_uninterrupted_run(tmp_path):
  """SIGKILL and SIGTERM, mixed, at >= 10 random moments (each after some new checkpoint), a rerun after each. Where
  a run is fast enough to finish sooner, another workdir goes through the same, until 10 kills are reached."""
  reference = tmp_path / 'reference'
  result = run_cli(reference, *FAULT_FLAGS)
  assert result.returncode == 0, result.stderr
  assert not [line for line in result.stderr.splitlines() if line.strip()], result.stderr  # quiet: nothing on stderr
  rng, kills, attempt = random.Random(0), 0, 0
  while kills < 10:
    workdir, attempt = tmp_path / f'killed_{attempt}', attempt + 1
    kills += kill_at_random_moments_until_done(workdir, rng)
    assert_same_run(workdir, reference)
  print(f'{kills} kills over {attempt} workdirs')  # shown by pytest -rP


def assert_same_run(workdir, reference) -> None:
  """`workdir` ended with `reference`'s results (but wall times), metrics, TensorBoard scalars and signed masks."""
  assert without_times(json.loads(pathlib.Path(RunDir(workdir).results).read_text())) == without_times(
      json.loads(pathlib.Path(RunDir(reference).results).read_text()))
  assert pathlib.Path(RunDir(workdir).metrics).read_text() == pathlib.Path(RunDir(reference).metrics).read_text()
  assert tensorboard_scalars(RunDir(workdir).tensorboard) == tensorboard_scalars(RunDir(reference).tensorboard)
  for run in (reference, workdir):
    assert not os.listdir(os.path.dirname(RunDir(run).partial('x')))  # every phase finished: nothing left half-way
  signs = [restored_signs(run) for run in (reference, workdir)]
  jax.tree.map(np.testing.assert_array_equal, *signs)


def restored_signs(workdir) -> list:
  """The signed masks of every pruning round saved in `workdir`."""
  with Checkpoints(RunDir(str(workdir)).checkpoints('prune')) as checkpoints:  # read as `signs export` reads them
    return [restore_signs(os.path.join(checkpoints.directory, str(step), 'state'))
            for step in checkpoints.steps()]


def test_a_run_does_not_import_torch(tmp_path):
  """tensorboardX imports PyTorch where it is installed (2.5 s at every start); aws_jax keeps it from doing so, and
  PyTorch still imports afterwards."""
  pytest.importorskip('torch')
  code = ('import sys; from aws_jax import main, protocol, reporting, study; '
          'from aws_jax.rundir import RunDir; log = reporting.MetricsLog(RunDir(sys.argv[1])); '
          'log.write({"phase": "round 0", "epoch": 1, "loss": 1.0}, 1); '
          'log.close(); print(sorted(m for m in sys.modules if m.split(".")[0] == "torch")); import torch')
  result = subprocess.run([sys.executable, '-c', code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'
  assert tensorboard_scalars(RunDir(tmp_path).tensorboard)['round_0', 'loss'] == {1: 1.0}
