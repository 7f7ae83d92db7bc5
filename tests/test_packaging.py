"""The package as a user installs it: a wheel with its configs, run by name from a directory with no configs/."""
import os
import shutil
import subprocess
import sys

from conftest import REPO, SUBPROCESS_TIMEOUT, TINY_FLAGS

COPIED = ('pyproject.toml', 'README.md', 'aws_jax', 'configs')


def test_wheel_installs_configs_and_runs_digits_by_name(tmp_path):
  source = tmp_path / 'source'  # a copy: building writes build/ and *.egg-info beside pyproject.toml
  source.mkdir()
  for name in COPIED:
    if os.path.isdir(os.path.join(REPO, name)):
      shutil.copytree(os.path.join(REPO, name), source / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(os.path.join(REPO, name), source / name)
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  subprocess.run([*pip, 'wheel', '.', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist')], cwd=source,
                 check=True, timeout=SUBPROCESS_TIMEOUT)
  wheel, = (tmp_path / 'dist').glob('aws_jax-*.whl')
  site = tmp_path / 'site'
  subprocess.run([*pip, 'install', '--no-deps', '--target', str(site), str(wheel)], check=True,
                 timeout=SUBPROCESS_TIMEOUT)
  assert (site / 'aws_jax' / 'configs' / 'digits.py').is_file() and not (site / 'configs').exists()

  empty = tmp_path / 'elsewhere'
  empty.mkdir()
  env = {**os.environ, 'PYTHONPATH': str(site)}

  def run(*args):
    return subprocess.run([sys.executable, '-m', 'aws_jax.main', *args], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)

  where = subprocess.run([sys.executable, '-c', 'import aws_jax; print(aws_jax.__file__)'], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel, not this checkout

  help_text = run('--help')
  assert help_text.returncode == 0, help_text.stderr
  assert 'digits, fashion_mnist' in ' '.join(help_text.stdout.split())

  unknown = run('--config=no_such_config', '--workdir=w')
  assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
  assert 'cifar100, digits, fashion_mnist, imagenet, tiny_imagenet, vgg' in unknown.stderr

  result = run('--config=digits', '--workdir=runs/digits', *TINY_FLAGS, '--config.final.modes=("signed",)')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (empty / 'runs' / 'digits' / 'results.json').is_file()
  assert 'round  3' in result.stdout and 'final signed' in result.stdout
