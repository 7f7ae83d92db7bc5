"""Two processes on localhost with jax.distributed (gloo CPU collectives) prune like one process."""
import json
import os
import pathlib
import socket
import subprocess

import jax
import numpy as np
import pytest

from aws_jax import protocol
from aws_jax.rundir import RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT, cli_command, tiny_digits_config
from test_protocol import restore_round

# One compute thread per process (XLA's Eigen pool off, oneDNN's OpenMP at one thread that sleeps when idle): on a
# machine with fewer free cores than threads, two processes that wait on each other's collectives every step would
# otherwise preempt each other's spinning threads and crawl.
ONE_THREAD = {'XLA_FLAGS': '--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false',
              'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE'}
# XLA's convolutions on both sides: one device would otherwise run oneDNN's, whose float32 sums round differently.
ONE_PROCESS = {'stage': 'prune', 'prune.warmup_epochs': 1, 'prune.rounds': 1, 'prune.round_epochs': 1,
               'barrier.psi_reset': False, 'conv': 'xla'}
FLAGS = tuple(f'--config.{key}={value}' for key, value in ONE_PROCESS.items())


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.long
def test_two_processes_find_the_same_masks_as_one(tmp_path):
  two = tmp_path / 'two_processes'
  address = f'localhost:{free_port()}'
  env = {**os.environ, **ONE_THREAD}
  processes = [subprocess.Popen(cli_command(two, *FLAGS, '--distributed', f'--coordinator_address={address}',
                                            '--num_processes=2', f'--process_id={i}'),
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=SUBPROCESS_TIMEOUT) for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
  assert 'round  1' in outputs[0][0] and 'round' not in outputs[1][0]  # process 0 alone reports

  # The same run in this process, on its one device.
  one = tmp_path / 'one_process'
  protocol.run(tiny_digits_config(**ONE_PROCESS), str(one))

  rounds = [json.loads(pathlib.Path(RunDir(w).results).read_text())['rounds'] for w in (two, one)]
  assert [r['fraction_left'] for r in rounds[0]] == [r['fraction_left'] for r in rounds[1]]
  np.testing.assert_allclose([r['test_accuracy'] for r in rounds[0]], [r['test_accuracy'] for r in rounds[1]],
                             atol=0.01)
  config = tiny_digits_config(**{'prune.rounds': 1})
  _, a = restore_round(str(two), config, 1)
  _, b = restore_round(str(one), config, 1)
  agreement = [np.mean(np.asarray(x) == np.asarray(y))
               for x, y in zip(jax.tree.leaves(a.mask), jax.tree.leaves(b.mask))]
  assert min(agreement) > 0.999, agreement
