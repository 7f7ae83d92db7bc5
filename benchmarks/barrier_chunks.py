"""Seconds of a pruning round's ψ-reset barrier with its α points one at a time against vectorised, alternating.

  python benchmarks/barrier_chunks.py --config=configs/fashion_mnist.py:paper --workdir=W --round=9

W is a run directory of that config (`python -m aws_jax.main`, or a study's run). Each chunk (α points vmapped at
once, `--config.barrier.chunk`) is compiled once, then the barrier is timed `--repeats` times per chunk in
alternation. Prints one row per chunk and the largest difference between their curves (docs/speed.md, "A barrier's
points in one program").
"""
import argparse
import time

import numpy as np

from aws_jax import allocator


def measure(config, workdir: str, round_index: int, chunks, repeats: int) -> dict:
  """{chunk: {'first_s', 'seconds': [...], 'curve'}} for the ψ-reset path of `round_index` in `workdir`."""
  from aws_jax import analyses, barrier, engine  # pylint: disable=import-outside-toplevel
  from aws_jax.barrier_command import load_checkpoint  # pylint: disable=import-outside-toplevel
  setup = engine.make_setup(config)
  state, _, _ = load_checkpoint(setup, f'checkpoints/prune:{round_index}', workdir)
  data = analyses.path_data(setup)

  def curve(chunk):
    return barrier.psi_reset_curve(setup.model, state, setup.is_norm, data, config.barrier.points, chunk,
                                   impl=setup.config.conv)

  figures = {}
  for chunk in chunks:
    start = time.perf_counter()
    figures[chunk] = {'curve': curve(chunk), 'first_s': time.perf_counter() - start, 'seconds': []}
  for _ in range(repeats):
    for chunk in chunks:
      start = time.perf_counter()
      curve(chunk)
      figures[chunk]['seconds'].append(time.perf_counter() - start)
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', required=True, help='the config that trained the run, e.g. configs/digits.py')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--round', type=int, required=True, help='the pruning round whose ψ-reset path is timed')
  parser.add_argument('--chunks', default='', help='comma-separated; default: 1 and all the points')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  allocator.restart_with_tcmalloc()
  from aws_jax import cli  # pylint: disable=import-outside-toplevel
  config = cli.get_config(args.config)
  chunks = [int(c) for c in args.chunks.split(',')] if args.chunks else [1, config.barrier.points]
  figures = measure(config, args.workdir, args.round, chunks, args.repeats)
  print('| points at once | seconds per barrier | first call (with compilation) |\n| --- | --- | ---: |')
  for chunk, f in figures.items():
    print(f'| {chunk} | {", ".join(f"{s:.1f}" for s in f["seconds"])} | {f["first_s"]:.1f} |')
  errors = [np.array(f['curve']['test_error']) for f in figures.values()]
  losses = [np.array(f['curve']['test_loss']) for f in figures.values()]
  print(f'largest difference from chunk {chunks[0]}: test error {max(np.abs(e - errors[0]).max() for e in errors):.3g} '
        f'points, test loss {max(np.abs(loss - losses[0]).max() for loss in losses):.3g}; barrier '
        f'{figures[chunks[0]]["curve"]["barrier"]:.2f} points')


if __name__ == '__main__':
  main()
