"""One command per directory: main, study, barrier, signs export and plots refuse a directory another one is using
(studies of one workdir may share it), and a refused run leaves a directory as it found it."""
import os
import signal
import subprocess
import sys
import time

import pytest

from aws_jax.errors import UserError
from aws_jax.rundir import Lock, RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT, cli_command
from test_protocol import assert_one_line_error

DIGITS = os.path.join(REPO, 'configs', 'digits.py')


def command(name: str, workdir) -> list[str]:
  """`name` run on `workdir` with arguments that pass every check but the lock's."""
  python = [sys.executable, '-m']
  return {
      'main': [*python, 'aws_jax.main', f'--config={DIGITS}', f'--workdir={workdir}'],
      'study': [*python, 'aws_jax.study', f'--config={DIGITS}:study', f'--workdir={workdir}'],
      'barrier': [*python, 'aws_jax.barrier', f'--config={DIGITS}', f'--workdir={workdir}', '--preset=psi_reset'],
      'signs export': [*python, 'aws_jax.signs', 'export', f'--config={DIGITS}', f'--workdir={workdir}',
                       f'--out={workdir}.signs'],
      'plots': [*python, 'aws_jax.plots', f'--workdirs={workdir}', f'--out={workdir}_figures'],
  }[name]


COMMANDS = ('main', 'study', 'barrier', 'signs export', 'plots')
HOLDERS = {'main': False, 'study': True, 'barrier': False, 'signs export': False, 'plots': False}  # shared?


def test_studies_share_a_workdir_and_nothing_else_does(tmp_path):
  rundir = RunDir(str(tmp_path))
  with Lock(rundir, shared=True, holder='study'), Lock(rundir, shared=True, holder='study'):  # study --parallel
    with pytest.raises(UserError, match=r'in use by a running aws_jax process \(pid \d+ \(study\); pid \d+ \(study'):
      with Lock(rundir, holder='main'):
        pass
  with Lock(rundir, holder='main'):
    for shared in (False, True):
      with pytest.raises(UserError, match=r'\(pid \d+ \(main\)\)'):
        with Lock(rundir, shared=shared):
          pass
  with Lock(rundir, holder='main'):  # released: taken again
    pass


@pytest.mark.parametrize('holder', COMMANDS)
@pytest.mark.parametrize('runner', COMMANDS)
def test_a_command_is_refused_on_a_directory_another_command_is_using(tmp_path, holder, runner):
  if HOLDERS[holder] and HOLDERS[runner]:
    pytest.skip('studies of one workdir run together (study --parallel): tested above')
  workdir = tmp_path / 'w'
  workdir.mkdir()
  with Lock(RunDir(str(workdir)), shared=HOLDERS[holder], holder=holder):
    result = subprocess.run(command(runner, workdir), cwd=tmp_path, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT)
  assert_one_line_error(result, 'in use by a running aws_jax process', f'({holder})')
  assert sorted(os.listdir(workdir)) == ['.lock']  # nothing written


def test_a_study_is_refused_while_main_runs(tmp_path):
  """The case a user met: `study` started on the workdir of a running `main`."""
  workdir = tmp_path / 'w'
  # All of digits' images and 8 rounds: still running when the study below starts, on a loaded machine too.
  main = subprocess.Popen(cli_command(workdir, '--config.prune.rounds=8', '--config.train_examples=0'), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not (workdir / 'config.json').exists():  # written under the lock, once the run has started
      assert main.poll() is None and time.monotonic() < deadline, main.stderr.read()
      time.sleep(0.2)
    study = subprocess.run(command('study', workdir), cwd=tmp_path, capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT)
    assert_one_line_error(study, 'in use by a running aws_jax process', f'pid {main.pid} (main)')
    assert not (workdir / 'aws').exists() and not (workdir / 'study.md').exists()
  finally:
    main.send_signal(signal.SIGTERM)
    main.wait(timeout=SUBPROCESS_TIMEOUT)


@pytest.mark.parametrize('existing', [False, True])
def test_a_refused_run_leaves_the_workdir_as_it_found_it(tmp_path, existing):
  workdir = tmp_path / 'w'
  if existing:
    workdir.mkdir()
    (workdir / 'notes.txt').write_text('mine')
  result = subprocess.run(cli_command(workdir, '--config.dataset=cifar10', f'--config.data_dir={tmp_path / "none"}',
                                      '--config.model=resnet20'),
                          cwd=REPO, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert_one_line_error(result, 'cifar10', str(tmp_path / 'none'))
  if existing:
    assert sorted(os.listdir(workdir)) == ['notes.txt']
  else:
    assert not workdir.exists()
