"""Figures for papers, drawn with matplotlib's Agg canvas (no pyplot, no display, no global backend change).

Each `plot_*` writes a PNG and returns the data of the lines it drew, {axis: {label: {'x': [...], 'y': [...]}}},
read back from the axes. Command line (several workdirs, e.g. an AWS run and an LRR run):

  python -m aws_jax.plots --workdirs=runs/digits,runs/digits_lrr --out=runs/figures [--barriers=a.json,b.json]

writes accuracy_vs_sparsity.png (test accuracy against % weights left per method and final-stage start),
psi_reset_barrier.png (the error barrier to the ψ-reset network after every pruning round), signs.png (signs changed
since initialisation and since the previous round, where the rounds recorded them) and, with --barriers (JSON files
of `python -m aws_jax.barrier`), barriers.png with their curves overlaid. `python -m aws_jax.study` draws the same
figures for a study, and starts.png (`plot_comparison`).

The package: `common` (the Agg figure, styles, the sparsity axis, means over seeds, `load_results`),
`pruning_stage` (accuracy against sparsity, ψ-reset barriers, ψ, sign changes), `comparisons` (barrier curves, the
LMC and SGD-noise pairs, the final comparison) and `__main__` (the command line); `write_figures` is here, and the
modules' public names are the package's.
"""
import json
import os
from typing import Sequence

from aws_jax.errors import UserError
from aws_jax.plots.common import METHOD_STYLES, MODE_COLORS, load_results
from aws_jax.plots.comparisons import PAIR_NAME, pair_kind, plot_barriers, plot_comparison, plot_pair_curves
from aws_jax.plots.pruning_stage import (DODGE_POINTS, SIGN_KEYS, plot_accuracy, plot_accuracy_vs_sparsity, plot_psi,
                                        plot_psi_reset_barriers, plot_sign_changes, stage_accuracy)

__all__ = ['METHOD_STYLES', 'MODE_COLORS', 'load_results', 'PAIR_NAME', 'pair_kind', 'plot_barriers', 'plot_comparison',
           'plot_pair_curves', 'DODGE_POINTS', 'SIGN_KEYS', 'plot_accuracy', 'plot_accuracy_vs_sparsity', 'plot_psi',
           'plot_psi_reset_barriers', 'plot_sign_changes', 'stage_accuracy', 'write_figures']


def write_figures(workdirs: Sequence[str], barrier_files: Sequence[str], out: str, signs: bool = False) -> list[str]:
  """Every figure the inputs allow, in `out`; returns their paths. signs.png only when asked (the command line
  does), where the rounds recorded sign changes."""
  os.makedirs(out, exist_ok=True)
  written = []
  if workdirs:
    written.append(os.path.join(out, 'accuracy_vs_sparsity.png'))
    plot_accuracy_vs_sparsity(workdirs, written[-1])
    if any('psi_reset_barrier' in r for w in workdirs for r in load_results(w)[0]['rounds']):
      written.append(os.path.join(out, 'psi_reset_barrier.png'))
      plot_psi_reset_barriers(workdirs, written[-1])
    if signs and any(key in r for w in workdirs for r in load_results(w)[0]['rounds'] for key in SIGN_KEYS):
      written.append(os.path.join(out, 'signs.png'))
      plot_sign_changes(workdirs, written[-1])
  if barrier_files:
    curves = {}
    for name in barrier_files:
      if not os.path.exists(name):
        raise UserError(f'no barrier file {name}: write one with `python -m aws_jax.barrier`')
      with open(name) as f:
        result = json.load(f)
      curves[result.get('label', os.path.basename(name))] = result
    written.append(os.path.join(out, 'barriers.png'))
    plot_barriers(curves, written[-1])
  return written
