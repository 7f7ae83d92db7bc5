"""What every command line shares: --help exits 0, configs by path or name, one-line errors before JAX loads."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, SUBPROCESS_TIMEOUT

ENTRY_POINTS = ('aws_jax.main', 'aws_jax.study', 'aws_jax.barrier', 'aws_jax.signs', 'aws_jax.plots')
NAMES = 'cifar100, digits, fashion_mnist, imagenet, tiny_imagenet, vgg'


@pytest.fixture
def run_without_jax(tmp_path):
  """Runs `python -m MODULE ARGS` from an empty directory where importing jax (or matplotlib) fails: what it answers
  needs neither."""
  fake = tmp_path / 'fake'
  for heavy in ('jax', 'matplotlib'):
    (fake / heavy).mkdir(parents=True)
    (fake / heavy / '__init__.py').write_text(f'raise ImportError("{heavy} imported before the input was checked")\n')
  cwd = tmp_path / 'scratch'
  cwd.mkdir()
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join((str(fake), REPO))}

  def run(module, *args):
    return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  run.cwd = cwd
  return run


def assert_one_line(result, fragment):
  assert result.returncode == 2, (result.returncode, result.stderr)
  assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize('module', ENTRY_POINTS)
def test_help_exits_0_and_names_the_shipped_configs(run_without_jax, module):
  result = run_without_jax(module, '--help')
  assert result.returncode == 0, result.stderr
  if module != 'aws_jax.plots':  # plots reads results, not configs
    assert NAMES in ' '.join(result.stdout.split())


def test_config_errors_are_one_line(run_without_jax):
  (run_without_jax.cwd / 'broken.py').write_text('def get_config(:\n  pass\n')
  cases = [(('--config=broken.py',), 'SyntaxError in'),
           (('--config=missing.py',), 'no such file'),
           (('--config=configs/digits.py',), 'no such file'),  # relative to the working directory: not here
           (('--config=no_such_name',), f'names {NAMES}'),
           (('--config=cifar100:resnet18',), "unknown preset 'resnet18'"),
           ((f'--config={REPO}/configs/vgg.py:typo',), "unknown preset 'typo'; choose one of aws, lrr, smoke"),
           (('--config=digits', '--config.prune.fraction=2'), 'between 0 and 1')]
  for args, fragment in cases:
    for module in ('aws_jax.main', 'aws_jax.barrier', 'aws_jax.study'):
      result = run_without_jax(module, *args, '--workdir=run', *(['--preset=lmc'] * (module == 'aws_jax.barrier')))
      assert_one_line(result, fragment)
      assert 'config_config' not in result.stderr
  assert not (run_without_jax.cwd / 'run').exists()


def test_unfinished_runs_say_what_is_missing_and_what_to_run(run_without_jax):
  (run_without_jax.cwd / 'runs' / 'empty').mkdir(parents=True)
  result = run_without_jax('aws_jax.barrier', '--config=digits', '--workdir=runs/empty', '--preset=psi_reset')
  assert_one_line(result, f'{run_without_jax.cwd}/runs/empty/checkpoints/prune does not exist')
  assert '--config.stage=prune' in result.stderr
  result = run_without_jax('aws_jax.barrier', '--config=digits', '--workdir=runs/empty', '--preset=sgd_noise',
                           '--seeds=2,3')
  assert_one_line(result, 'checkpoints/final/signed_round8_seed2 does not exist')
  assert '--config.stage=final --config.final.source_round=8 --config.final.seeds="(2,3,)"' in result.stderr
  result = run_without_jax('aws_jax.signs', 'export', '--config=digits', '--workdir=runs/empty', '--out=x.signs')
  assert_one_line(result, 'holds no complete pruning round')
  result = run_without_jax('aws_jax.plots', '--workdirs=runs/empty')
  assert_one_line(result, f'no results.json in {run_without_jax.cwd}/runs/empty')
