"""Where one train step's oneDNN time goes, per primitive, under each installed oneDNN build (aws_jax/onednn.py).

Runs `aws_jax.speed.step_figures` once per build in a process of its own with ONEDNN_VERBOSE=1, sums the verbose
exec lines' milliseconds by (primitive, direction, algorithm) and divides by the number of steps the process ran
(counted by its first forward convolution). Verbose timing slows every call alike: compare builds, not steps.
Prints a markdown table.

Usage (from the repository root; both builds need `apt-get install libdnnl-dev g++` and `pip install -e ".[onednn]"`):
  python benchmarks/onednn_primitives.py [--model resnet20] [--batch 128] [--libraries system,pypi]
  AWS_JAX_WINOGRAD=0 python benchmarks/onednn_primitives.py    # direct convolutions on both sides
"""
import argparse
import collections
import json
import os
import subprocess
import sys

STEP = ('import json, sys; from aws_jax import speed; '
        'speed.step_figures(*json.loads(sys.argv[1]))')


def per_step(verbose: str) -> tuple[dict, dict, int]:
  """({(primitive, direction, algorithm): ms per step}, {same key: implementations}, steps) of oneDNN 2.x or 3.x
  verbose output; a step is one exec of the first forward-training convolution's shape."""
  totals, implementations, first, steps = collections.defaultdict(float), collections.defaultdict(set), None, 0
  for line in verbose.splitlines():
    fields = line.split(',')
    if fields[0] != 'onednn_verbose' or 'exec' not in fields or 'cpu' not in fields:
      continue
    at = fields.index('cpu') + 1  # 2.x: onednn_verbose,exec,cpu,KIND,...; 3.x: onednn_verbose,v1,primitive,exec,cpu,...
    kind, implementation, direction = fields[at:at + 3]
    algorithm = next((f[len('alg:'):] for f in fields if f.startswith('alg:')), '')
    if (kind, direction) == ('convolution', 'forward_training'):
      first = first or fields[-2]
      steps += fields[-2] == first
    totals[kind, direction, algorithm] += float(fields[-1])
    implementations[kind, direction, algorithm].add(implementation)
  return {k: v / max(steps, 1) for k, v in totals.items()}, implementations, steps


def verbose_step(library: str, model: str, batch: int, image: int, classes: int, steps: int) -> str:
  args = [model, batch, image, classes, steps, 0.0, True, 'auto', False]
  env = {**os.environ, 'AWS_JAX_ONEDNN_LIBRARY': library, 'ONEDNN_VERBOSE': '1'}
  result = subprocess.run([sys.executable, '-c', STEP, json.dumps(args)], capture_output=True, text=True, env=env,
                          check=False)
  if result.returncode:
    raise SystemExit(f'the step with oneDNN {library!r} failed: {result.stderr.strip().splitlines()[-1:]}')
  return result.stdout


def table(figures: dict) -> str:
  """Markdown: a row per (primitive, direction, algorithm), a ms column per library, then the totals."""
  libraries = list(figures)
  keys = sorted(set().union(*(ms for ms, _, _ in figures.values())))
  lines = ['| primitive | direction | algorithm | ' + ' | '.join(f'{lib} ms' for lib in libraries)
           + ' | implementations |', '| --- | --- | --- | ' + ' | '.join('---:' for _ in libraries) + ' | --- |']
  for key in keys:
    ms = ' | '.join(f'{figures[lib][0].get(key, 0.0):.1f}' for lib in libraries)
    used = '; '.join(f'{lib}: ' + ','.join(sorted(figures[lib][1][key])) for lib in libraries if key in figures[lib][0])
    lines.append(f'| {" | ".join(key)} | {ms} | {used} |')
  lines.append('| total | | | ' + ' | '.join(f'{sum(figures[lib][0].values()):.1f}' for lib in libraries) + ' | |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image', type=int, default=32)
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--libraries', default='system,pypi')
  args = parser.parse_args()
  figures = {library: per_step(verbose_step(library, args.model, args.batch, args.image, args.classes, args.steps))
             for library in args.libraries.split(',')}
  print(table(figures))
  print('steps counted: ' + ', '.join(f'{library} {steps}' for library, (_, _, steps) in figures.items()))


if __name__ == '__main__':
  main()
