"""The CLI restarts itself under TCMalloc where it is installed, once, keeping its arguments."""
import ctypes.util
import os
import subprocess
import sys

import pytest

from aws_jax import allocator

INSTALLED = ctypes.util.find_library(allocator.LIBRARY) is not None


def test_preload_env_is_none_when_off_or_already_preloaded():
  assert allocator.preload_env({'AWS_JAX_TCMALLOC': '0'}) is None
  assert allocator.preload_env({'LD_PRELOAD': '/usr/lib/libtcmalloc.so.4'}) is None


@pytest.mark.skipif(not INSTALLED, reason='needs libtcmalloc-minimal4 (CI installs it)')
def test_preload_env_adds_tcmalloc_before_other_preloads():
  env = allocator.preload_env({'LD_PRELOAD': 'libother.so', 'KEEP': 'x'})
  assert env['LD_PRELOAD'].startswith('libtcmalloc_minimal') and env['LD_PRELOAD'].endswith(':libother.so')
  assert env['KEEP'] == 'x'


@pytest.mark.skipif(not INSTALLED, reason='needs libtcmalloc-minimal4 (CI installs it)')
def test_restart_runs_the_same_command_under_tcmalloc():
  script = ('import os, sys; from aws_jax import allocator; allocator.restart_with_tcmalloc(); '
            'print(os.environ["LD_PRELOAD"], sys.argv[1:])')
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'AWS_JAX_TCMALLOC')}
  out = subprocess.run([sys.executable, '-c', script, 'a', '--b'], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert 'tcmalloc' in out and out.strip().endswith("['a', '--b']")
  maps = subprocess.run([sys.executable, '-c', script.replace('print(os.environ["LD_PRELOAD"], sys.argv[1:])',
                                                              'print(open("/proc/self/maps").read())')],
                        env=env, capture_output=True, text=True, check=True).stdout
  assert 'tcmalloc' in maps  # loaded into the process, not just named in its environment
