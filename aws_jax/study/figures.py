"""A study's figures (FIGURES), from its rows, summaries, differences and pruning runs; a method's pruning runs are
pooled in each, and variants are told apart by their labels ('variant/method')."""
from typing import Mapping, Sequence

import ml_collections

from aws_jax import analyses, plots
from aws_jax.rundir import RunDir, StudyDir
from aws_jax.study.grid import DENSE
from aws_jax.study.report import method_of, variant_of
from aws_jax.study.stats import CONFIDENCE

FIGURES = ('accuracy_vs_sparsity.png', 'psi_reset_barrier.png', 'psi.png', 'starts.png', 'signs.png', 'lmc.png')


def _label(row_or_summary: dict) -> str:
  """A grid cell's label: 'AWS signed r8' (with its variant: 'wd5e-3/AWS signed r8'), or 'dense'."""
  variant = row_or_summary.get('variant')
  name = 'dense' if row_or_summary['method'] == DENSE else \
      f'{row_or_summary["method"].upper()} {row_or_summary["start"]} r{row_or_summary["source_round"]}'
  return name if variant is None else f'{variant}/{name}'


def _run_label(run: str) -> str:
  """A pruning run's line label: its method, with its variant where there are variants."""
  variant = variant_of(run)
  return method_of(run) if variant is None else f'{variant}/{method_of(run)}'


def figures(config: ml_collections.ConfigDict, study_dir: StudyDir, rows: Sequence[dict], summaries: Sequence[dict],
            differences: Sequence[dict], rounds: Mapping[str, list], run_dirs: Mapping[str, RunDir]) -> list[str]:
  """The study's figures (those the runs recorded data for) in `study_dir`; returns their paths.

  `rounds` and `run_dirs` map each pruning run's name ('aws', 'aws_seed3', 'variant/aws') to its round records and
  its run directory.
  """
  paths = {name: study_dir.figure(name) for name in FIGURES}
  title = f'{config.model} on {config.dataset}'
  stage = {}  # a method's pruning runs pooled: the figure averages them at each sparsity
  for run, records in rounds.items():
    stage.setdefault(_run_label(run), []).extend((100 * r['fraction_left'], 100 * plots.stage_accuracy(r))
                                                 for r in records)
  final, dense = {}, []
  for r in rows:
    if r['method'] == DENSE:
      dense.append(100 * r['test_accuracy'])
    else:
      method = r['method'] if r.get('variant') is None else f'{r["variant"]}/{r["method"]}'
      final.setdefault((method, r['start']), []).append((100 * r['fraction_left'], 100 * r['test_accuracy']))
  plots.plot_accuracy(stage, final, paths['accuracy_vs_sparsity.png'], dense=dense, title=title)
  recorded = {key for records in rounds.values() for r in records for key in r}
  directories = [run_dirs[run].root for run in rounds]
  labels = [_run_label(run) for run in rounds]
  for name, key, draw in (('psi_reset_barrier.png', 'psi_reset_barrier', plots.plot_psi_reset_barriers),
                          ('psi.png', 'psi_gamma_median', plots.plot_psi)):
    if key in recorded:
      draw(directories, paths[name], labels=labels)
    else:
      del paths[name]
  accuracies = {_label(s): (100 * s['mean'], 100 * s['half_width']) for s in summaries}
  gaps = {f'{d["label"]} r{d["source_round"]}' if d.get('variant') is None else
          f'{d["variant"]}/{d["label"]} r{d["source_round"]}': (100 * d['mean'], 100 * d['half_width'])
          for d in differences if d.get('field', 'test_accuracy') == 'test_accuracy'}
  plots.plot_comparison(accuracies, gaps, paths['starts.png'], title=title, confidence=CONFIDENCE,
                        pruning_runs=any(s.get('runs', 1) > 1 for s in summaries))
  if recorded & set(plots.SIGN_KEYS):
    plots.plot_sign_changes(directories, paths['signs.png'], labels=labels)
  else:
    del paths['signs.png']
  pairs = {}
  for run in rounds:
    pairs.setdefault(_run_label(run), []).extend(analyses.stored_pairs(run_dirs[run]))
  if any(plots.pair_kind(c) for curves in pairs.values() for c in curves):
    plots.plot_pair_curves(pairs, paths['lmc.png'], title=title)
  else:
    del paths['lmc.png']
  return list(paths.values())
