"""Command line: the figures of run directories and barrier files.

  python -m aws_jax.plots --workdirs=runs/digits,runs/digits_lrr --out=runs/figures [--barriers=a.json,b.json]

writes in --out (default: figures) accuracy_vs_sparsity.png, psi_reset_barrier.png (where the rounds measured it),
signs.png (where they recorded sign changes) and, with --barriers (JSON files of `python -m aws_jax.barrier`),
barriers.png, and prints their paths (`write_figures`). What each figure shows: the docstring of `aws_jax.plots`.
"""
from absl import app, flags

from aws_jax import cli
from aws_jax.errors import UserError
from aws_jax.plots import write_figures


def main(argv):
  cli.check_no_arguments(argv)
  values = flags.FLAGS
  if not values.workdirs and not values.barriers:
    cli.exit_with('nothing to plot: give --workdirs (with results.json) and/or --barriers (barrier JSON files)')
  try:
    with cli.holding(values.workdirs or [], 'plots'):
      for path in write_figures(values.workdirs or [], values.barriers or [], values.out, signs=True):
        print(path)
  except UserError as e:
    cli.exit_with(e)


if __name__ == '__main__':
  # Defined only when run: importing the package (aws_jax.barrier_command does) defines no flags.
  cli.define_path_list('workdirs', 'Run directories holding results.json (AWS and LRR runs, several sparsities).')
  cli.define_path_list('barriers', 'Barrier JSON files of `python -m aws_jax.barrier`, overlaid in barriers.png.')
  cli.define_path('out', 'figures', 'Directory the PNG files are written to.')
  app.run(main, flags_parser=cli.parse_flags)
