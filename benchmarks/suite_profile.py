"""Where the test suite's time goes: CPU per test (its own and that of the processes it starts), per command, and the
seconds spent compiling, tracing, lowering and checkpointing.

  python benchmarks/suite_profile.py [PYTEST_ARGS ...]        (default: the whole suite, as the README runs it)

Runs `python -m pytest -q PYTEST_ARGS` with a `sitecustomize` on PYTHONPATH that, in every Python process the suite
starts, listens to JAX's monitoring events and writes one JSON line at exit (its CPU seconds, the test that started
it, the events' seconds), and a pytest plugin that writes each test's CPU and compilation seconds inside the
workers. Processes killed by a signal write nothing, nor do those started with an environment of their own. Event
seconds are the wall seconds of the thread that waited on them, so on a loaded machine they overstate the CPU they
took. docs/speed.md, "The test suite's time", has what it printed.
"""
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# What each process records: one JSON line at exit (`_record`), its compilations split into cache hits and misses.
SITECUSTOMIZE = '''
import atexit, collections, importlib.abc, importlib.util, json, os, resource, sys, threading
_seconds, _local = collections.Counter(), threading.local()
_EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'tracing', '/jax/core/compile/jaxpr_to_mlir_module_duration':
           'lowering', '/jax/orbax/write/total_duration_secs': 'checkpoint writes',
           '/jax/orbax/read/total_duration_secs': 'checkpoint reads'}
def _on_event(event, seconds, **kwargs):
  if event == '/jax/compilation_cache/compile_time_saved_sec':
    _local.hit = True
  elif event == '/jax/core/compile/backend_compile_duration':
    kind = 'compilation (cache hits)' if getattr(_local, 'hit', False) else 'compilation (cache misses)'
    _local.hit = False
    _seconds[kind] += seconds
    _seconds[kind + ' count'] += 1
  elif event in _EVENTS:
    _seconds[_EVENTS[event]] += seconds
class _ListenOnceJaxLoads(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name != 'jax._src.monitoring':
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    load = spec.loader.exec_module
    def exec_module(module):
      load(module)
      module.register_event_duration_secs_listener(_on_event)
    spec.loader.exec_module = exec_module
    return spec
sys.meta_path.insert(0, _ListenOnceJaxLoads())
def _record():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  with open(os.environ['AWS_JAX_SUITE_PROFILE'], 'a') as f:
    f.write(json.dumps({'kind': 'process', 'argv': sys.argv[:3], 'cpu': usage.ru_utime + usage.ru_stime,
                        'test': os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0],
                        'seconds': dict(_seconds)}) + chr(10))
atexit.register(_record)
'''

PLUGIN = '''
import json, os, resource
import pytest
import sitecustomize
def _now():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime, sitecustomize._seconds['compilation (cache misses)']
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  cpu, compiling = _now()
  yield
  cpu_after, compiling_after = _now()
  with open(os.environ['AWS_JAX_SUITE_PROFILE'], 'a') as f:
    f.write(json.dumps({'kind': 'test', 'test': item.nodeid, 'cpu': cpu_after - cpu,
                        'compile_misses_s': compiling_after - compiling}) + chr(10))
'''


def command_name(argv: list[str]) -> str:
  """'aws_jax.main', 'aws_jax.study', … for a process's argv (runpy leaves the module's file in argv[0])."""
  path = argv[0] if argv else ''
  if path == '-c':
    return 'python -c'
  parts = os.path.normpath(path).split(os.sep)
  if 'aws_jax' in parts:
    module = parts[parts.index('aws_jax'):]
    module[-1] = module[-1].removesuffix('.py')
    return '.'.join(module[:-1] if module[-1] == '__main__' else module)
  return os.path.basename(path) or 'python'


def summarize(records: list[dict]) -> dict:
  """Totals of the JSON lines: CPU and compilation per test (in-process plus the processes it started), CPU per
  command, and the event seconds of every process."""
  per_test = collections.defaultdict(lambda: {'cpu': 0.0, 'processes': 0, 'compile_misses_s': 0.0})
  per_command = collections.defaultdict(lambda: {'cpu': 0.0, 'processes': 0})
  seconds = collections.Counter()
  for record in records:
    if record['kind'] == 'test':
      per_test[record['test']]['cpu'] += record['cpu']
      per_test[record['test']]['compile_misses_s'] += record['compile_misses_s']
      continue
    seconds.update(record['seconds'])
    if not record['test']:  # pytest itself and its workers: their tests are counted by the plugin
      continue
    test = per_test[record['test']]
    test['cpu'] += record['cpu']
    test['processes'] += 1
    test['compile_misses_s'] += record['seconds'].get('compilation (cache misses)', 0.0)
    command = per_command[command_name(record['argv'])]
    command['cpu'] += record['cpu']
    command['processes'] += 1
  return {'tests': dict(per_test), 'commands': dict(per_command), 'seconds': dict(seconds),
          'processes': sum(r['kind'] == 'process' for r in records),
          'in_process_cpu': sum(r['cpu'] for r in records if r['kind'] == 'test')}


def print_summary(summary: dict, wall: float, cpu: float, top: int = 15) -> None:
  print(f'\nwall {wall:.0f} s; CPU (user + sys of pytest and every process it started) {cpu:.0f} s; '
        f'{summary["processes"]} Python processes logged')
  print('\nseconds inside, summed over processes:')
  for name, value in sorted(summary['seconds'].items(), key=lambda kv: -kv[1]):
    if not name.endswith(' count'):
      count = summary['seconds'].get(name + ' count')
      print(f'  {name:32s} {value:7.1f}' + (f'  ({count:.0f} programs)' if count else ''))
  print(f'\nCPU of the tests inside the pytest workers {summary["in_process_cpu"]:.0f} s; of the processes they '
        'started, per command:')
  for name, c in sorted(summary['commands'].items(), key=lambda kv: -kv[1]['cpu']):
    print(f'  {name:28s} {c["cpu"]:7.1f} s  {c["processes"]:4d} processes')
  print(f'\nthe {top} tests with the most CPU (their own and their processes\'):')
  print(f'  {"CPU s":>7s} {"procs":>5s} {"compile s":>9s}  test')
  for name, t in sorted(summary['tests'].items(), key=lambda kv: -kv[1]['cpu'])[:top]:
    print(f'  {t["cpu"]:7.1f} {t["processes"]:5d} {t["compile_misses_s"]:9.1f}  {name}')


def main(pytest_args: list[str]) -> int:
  with tempfile.TemporaryDirectory(prefix='aws_jax_suite_profile_') as tmp:
    with open(os.path.join(tmp, 'sitecustomize.py'), 'w') as f:
      f.write(SITECUSTOMIZE)
    with open(os.path.join(tmp, 'aws_jax_suite_profile_plugin.py'), 'w') as f:
      f.write(PLUGIN)
    log = os.path.join(tmp, 'processes.jsonl')
    env = {**os.environ, 'AWS_JAX_SUITE_PROFILE': log,
           'PYTHONPATH': os.pathsep.join(filter(None, (tmp, os.environ.get('PYTHONPATH'))))}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    status = subprocess.call([sys.executable, '-m', 'pytest', '-q', '-p', 'aws_jax_suite_profile_plugin',
                              *pytest_args], env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with open(log) as f:
      records = [json.loads(line) for line in f]
  print_summary(summarize(records), time.perf_counter() - start, cpu)
  return status


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
