"""A study: the paper's comparisons as one grid of runs, with statistics over seeds and pruning runs.

Command:
  python -m aws_jax.study --config=configs/digits.py:study --workdir=runs/digits_study [--config.KEY=VALUE ...]

`config.study` is the grid: methods × starts × source rounds (−1: the last) × seeds, optionally × pruning seeds and
× variants. Each method's pruning stage runs once, as an ordinary run directory WORKDIR/<method>/ (`protocol.run`
with `config.method` set to it), and its final trainings are `final.modes` = the starts and `final.seeds` = the
seeds, once per source round. The `dense` start depends on neither the method nor the round: it is trained once per
seed, in the first method's directory from its last round, and reported as method `dense`.

`study.pruning_seeds` = (p, q, …) runs each method's pruning stage once per pruning seed (`config.seed` = p: its
initialisation, data order and α draws), in WORKDIR/<method>/ for `config.seed` itself and WORKDIR/<method>_seed<p>/
for the others, each with the same final seeds. The final trainings of one pruning run share its mask, so the
pruning run is the unit of a claim: with several, each interval is over the pruning runs' means (a difference's n:
pruning runs), differences are paired by pruning run and seed, and the dense start (which no pruning run changes) is
trained once (with the first pruning seed's runs) and paired by seed. `--parallel` runs each pruning seed's part in a
process of its own, all at once (`run_at_once`; for a GPU), then writes the combined tables.

`study.variants` = ((name, {key: value}), …) is an ablation: each variant is the config with its overrides (any key
a run's config holds, e.g. optimizer.weight_decay), and gets the whole grid in WORKDIR/<name>/ under the same seeds
and pruning seeds. study.csv gets a `variant` column; study.md gives each variant's tables, then each variant against
the first one, cell by cell, paired by pruning run and seed. Variants that leave the data and the model as they are
share one data load and the compiled steps.

Everything is checkpointed: rerunning resumes, and widening the grid (a seed, a start, a round, a method, a pruning
seed, a variant) trains only the new entries. WORKDIR then holds (`rundir.StudyDir`):

  study.csv                  one row per trained network (`report.csv_fields`)
  study.md                   mean ± std over seeds per (method, start, source round); the paired differences the
                             paper's claims rest on, with 95 % t-intervals; each pruning stage round by round
  accuracy_vs_sparsity.png   test accuracy against weights left, every method × start, and the pruning stages
  psi_reset_barrier.png      the ψ-reset barrier after every pruning round, per method (when measured)
  psi.png                    the median normalization layer's γ after every round, per method (when measured)
  starts.png                 the final comparison: accuracies and differences as bars with 95 % intervals
  signs.png                  signs changed since initialisation and since the previous round (when recorded)
  lmc.png                    test error along the linear paths: each start to the retrained network, seed to seed

Accuracies in study.md and the figures are percentages; differences are in points. A pruning round's accuracy is
the one with BatchNorm statistics re-estimated at α = 0 (`recalibrated_test_accuracy`), where recorded.

The package: `grid` (the grid and its variants, validated; no JAX), `stats` (summaries and paired intervals; no
JAX), `report` (rows, study.csv, study.md), `figures`, `runner` (training the grid), `parallel` (`--parallel`),
`__main__` (the command line). The names below are its public ones; the heavy ones load when first used, so that
importing the package (the command line's checks) loads no JAX.
"""
import importlib

from aws_jax.study.grid import DENSE, method_config, plan, pruning_seeds, run_name, source_rounds, validate, variants

_LAZY = {'run': 'runner', 'run_at_once': 'parallel', 'without_flags': 'parallel', 'markdown': 'report',
         'rows_of': 'report', 'csv_fields': 'report', 'time_account': 'report', 't_interval': 'stats',
         'group_summaries': 'stats', 'comparisons': 'stats', 'variant_comparisons': 'stats',
         'paired_differences': 'stats', 'interval': 'stats'}

__all__ = ['DENSE', 'method_config', 'plan', 'pruning_seeds', 'run_name', 'source_rounds', 'validate', 'variants',
           *_LAZY]


def __getattr__(name: str):
  """The heavy public names (`_LAZY`), imported from their module when first asked for."""
  if name in _LAZY:
    return getattr(importlib.import_module(f'aws_jax.study.{_LAZY[name]}'), name)
  raise AttributeError(f'module aws_jax.study has no attribute {name!r}')
