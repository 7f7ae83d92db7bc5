"""aws_jax/caches.py: the commands turn JAX's persistent compilation cache on in $AWS_JAX_CACHE/xla, unless
JAX_COMPILATION_CACHE_DIR is set; each case in a process of its own, as the setting is the environment's."""
import json
import os
import subprocess
import sys

import pytest

from aws_jax import caches
from conftest import REPO, SUBPROCESS_TIMEOUT

REPORT = '''
import json, os
from aws_jax import caches
path = caches.use_compilation_cache()
print(json.dumps([path, {k: v for k, v in os.environ.items() if k.startswith('JAX_')}]))
'''
WITHOUT_FILELOCK = '''
import sys
sys.modules['filelock'] = None  # its import fails
'''
COMPILE = '''
import json
import jax
from jax import monitoring
from aws_jax import caches
events = []
monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
path = caches.use_compilation_cache()  # after jax's import: through jax.config
jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(3.0)).block_until_ready()
print(json.dumps([path, '/jax/compilation_cache/cache_hits' in events]))
'''


def environment(**settings) -> dict:
  """This process's environment without the JAX_ settings the test session made, with `settings`."""
  return {**{k: v for k, v in os.environ.items() if not k.startswith('JAX_')}, **settings}


def run(code: str, env: dict):
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_cache_is_turned_on_under_aws_jax_cache_keeping_the_users_settings(tmp_path):
  path, env = run(REPORT, environment(AWS_JAX_CACHE=str(tmp_path), JAX_COMPILATION_CACHE_MAX_SIZE='1000'))
  assert path == str(tmp_path / 'xla') and os.path.isdir(path)
  assert env == {'JAX_COMPILATION_CACHE_DIR': path, 'JAX_COMPILATION_CACHE_MAX_SIZE': '1000',
                 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(caches.XLA_CACHE_MIN_COMPILE_SECONDS)}


def test_jax_compilation_cache_dir_decides_when_set(tmp_path):
  for value in ('', str(tmp_path / 'own')):
    path, env = run(REPORT, environment(AWS_JAX_CACHE=str(tmp_path), JAX_COMPILATION_CACHE_DIR=value))
    assert path is None and env == {'JAX_COMPILATION_CACHE_DIR': value}
  assert not (tmp_path / 'xla').exists()


def test_a_cache_directory_that_cannot_be_made_leaves_the_cache_off(tmp_path):
  (tmp_path / 'file').write_text('')
  assert run(REPORT, environment(AWS_JAX_CACHE=str(tmp_path / 'file'))) == [None, {}]


@pytest.mark.parametrize('filelock', [True, False])
def test_a_process_reads_what_an_earlier_one_compiled(tmp_path, filelock):
  """With the size limit, or without it where filelock is missing (JAX would refuse to compile under a limit)."""
  env = environment(AWS_JAX_CACHE=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  prelude = '' if filelock else WITHOUT_FILELOCK
  limit = run(prelude + REPORT, env)[1].get('JAX_COMPILATION_CACHE_MAX_SIZE')
  assert limit == (str(caches.XLA_CACHE_BYTES) if filelock else None)
  assert run(prelude + COMPILE, env) == [str(tmp_path / 'xla'), False]
  written = sorted(os.listdir(tmp_path / 'xla'))
  assert any(name.endswith('-cache') for name in written), written
  assert run(prelude + COMPILE, env) == [str(tmp_path / 'xla'), True]


def test_commands_turn_it_on_as_they_parse_their_flags(tmp_path):
  """`plots` refusing a missing workdir on one line has parsed its flags: the cache directory exists."""
  result = subprocess.run([sys.executable, '-m', 'aws_jax.plots', f'--workdirs={tmp_path / "missing"}',
                           f'--out={tmp_path / "figures"}'], cwd=REPO, env=environment(AWS_JAX_CACHE=str(tmp_path)),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode != 0 and result.stderr.startswith('error: '), result.stderr[-3000:]
  assert (tmp_path / 'xla').is_dir()
