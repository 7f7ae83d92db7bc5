"""`study --parallel`: each pruning seed's part of a study in a process of its own, all at once (for a GPU that one
process leaves mostly idle), then the combined tables."""
import os
import re
import signal
import subprocess
import sys
import time
from typing import Sequence

import ml_collections

from aws_jax import preemption
from aws_jax.errors import UserError
from aws_jax.rundir import Lock, StudyDir
from aws_jax.study.grid import DENSE, pruning_seeds
from aws_jax.study.runner import run


def last_line(path: str) -> str:
  """The last non-empty line of a log (of a progress bar's rewrites, the last)."""
  with open(path, errors='replace') as f:
    lines = [line.rsplit('\r', 1)[-1].strip() for line in f.read().splitlines()]
  return next((line for line in reversed(lines) if line), '(empty)')


def without_flags(arguments: Sequence[str], names: Sequence[str]) -> list[str]:
  """`arguments` less the flags `names` (--name=V, --name V, and --[no]name for booleans), up to a `--`."""
  kept, skip = [], False
  for index, argument in enumerate(arguments):
    if argument == '--':
      return kept + list(arguments[index:])
    if skip:
      skip = False
      continue
    name = argument.lstrip('-').split('=', 1)[0]
    if argument.startswith('-') and (name in names or (name.startswith('no') and name[2:] in names)):
      skip = '=' not in argument and name.startswith('config.')  # a config override's value may come next
      continue
    kept.append(argument)
  return kept


class LogFollower:
  """The complete new lines of a growing log, each time it is asked."""

  def __init__(self, path: str):
    self.path, self.offset, self.pending = path, 0, b''

  def new_lines(self) -> list[str]:
    with open(self.path, 'rb') as f:
      f.seek(self.offset)
      data = self.pending + f.read()
    self.offset += len(data) - len(self.pending)
    *lines, self.pending = data.split(b'\n')
    return [line.decode(errors='replace').rsplit('\r', 1)[-1] for line in lines]


# The lines of a process's log that its parent prints too (not its tables).
FOLLOWED = re.compile(r'^(study: |resuming |round |final |error|warning|note)')


def run_at_once(config: ml_collections.ConfigDict, workdir: str, arguments: Sequence[str]) -> dict:
  """Each pruning seed's part of the study in a process of its own, all at once, then `run` for the combined tables (it
  trains nothing more). For a GPU that one process leaves mostly idle (a TPU takes one process at a time): the
  processes share the device (XLA_PYTHON_CLIENT_PREALLOCATE=false, unless set). The first pruning seed's process
  trains the dense start, the others leave it out. `arguments` are the command's own (sys.argv[1:]); each process
  writes its output to WORKDIR/study_seed<p>.log (round lines, no progress bars), and its round, final, error and
  warning lines are printed here too, after `[pruning seed p]`. SIGTERM or SIGINT is passed on to every process,
  which stops with a checkpoint; then this raises `preemption.Stopped`. A failed process raises UserError with its
  log's last line, after the others end.
  """
  seeds = pruning_seeds(config)
  without_dense = tuple(s for s in config.study.starts if s != DENSE) or tuple(config.study.starts)
  study_dir = StudyDir(workdir)
  os.makedirs(study_dir.root, exist_ok=True)
  with Lock(study_dir.own, shared=True, holder='study --parallel'):  # the processes share it; other commands wait
    run_processes(seeds, without_dense, arguments, study_dir)
  return run(config, workdir)


def run_processes(seeds, without_dense, arguments, study_dir: StudyDir) -> None:
  """`run_at_once`'s processes, one per pruning seed, followed until they end."""
  environ = {**os.environ, 'XLA_PYTHON_CLIENT_PREALLOCATE': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')}
  processes, logs, started = {}, {}, time.monotonic()
  for index, seed in enumerate(seeds):
    replaced = ['parallel', 'config.progress', 'config.study.pruning_seeds'] + ['config.study.starts'] * bool(index)
    command = [sys.executable, '-m', 'aws_jax.study', *without_flags(arguments, replaced), '--config.progress=False',
               f'--config.study.pruning_seeds=({seed},)']  # a log file: round lines, no progress bars
    if index:
      command.append(f'--config.study.starts={without_dense!r}')
    logs[seed] = study_dir.log(seed)
    with open(logs[seed], 'w') as log:  # a session of its own: a terminal's Ctrl-C reaches it once, from here
      processes[seed] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ,
                                         start_new_session=True)
  print(f'{len(seeds)} pruning seeds at once ({", ".join(map(str, seeds))}); their output: '
        f'{study_dir.log("<p>")}; their round lines here', flush=True)
  followers, failed = {seed: LogFollower(path) for seed, path in logs.items()}, []
  with preemption.handling_signals():
    forwarded = None
    while processes:
      if preemption.requested() and not forwarded:
        forwarded = preemption.requested()
        for process in processes.values():
          process.send_signal(forwarded)
      for seed, process in list(processes.items()):
        ended = process.poll() is not None  # before reading its log: then every line it wrote is read
        for line in followers[seed].new_lines():
          if FOLLOWED.match(line):
            print(f'[pruning seed {seed}] {line}', flush=True)
        if ended:
          del processes[seed]
          outcome = 'done' if process.returncode == 0 else f'exit {process.returncode}: {last_line(logs[seed])}'
          print(f'pruning seed {seed}: {outcome} ({time.monotonic() - started:.0f} s)', flush=True)
          if process.returncode:
            failed.append((seed, process.returncode))
      time.sleep(0.2)
  if forwarded:
    raise preemption.Stopped(forwarded, f'stopped by {signal.Signals(forwarded).name}: each pruning seed\'s process '
                                        f'wrote a checkpoint; rerun the same command to resume')
  if failed:
    seed, status = min(failed, key=lambda f: seeds.index(f[0]))  # the first in the command's order
    raise UserError(f'pruning seed {seed}\'s process failed (exit {status}): {last_line(logs[seed])} '
                    f'(whole output: {logs[seed]}); what the others trained is kept, and rerunning resumes')


