"""Measurements of trained networks, as registered entries.

An analysis is a name, the kind of network it describes ('round': a pruning round's network; 'final': a final
training's), and a function of the setup and that network (`Network`) that returns a JSON-able dict. Its result is
stored beside what it describes (`RunDir.analysis`), computed once (a rerun reads it back), and merged into
results.json and the study's table. Adding a measurement is one `register` call plus its test.
"""
import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from aws_jax import barrier, conv, pruning, reporting, sharding, timing, train
from aws_jax import config as config_lib
from aws_jax.engine import Setup
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir

PyTree = Any


@dataclasses.dataclass
class Network:
  """A trained network to analyse: its name in the run directory, its state, and what analyses may ask of its
  history or its peers."""
  name: str
  state: train.TrainState
  previous_signs: PyTree | None = None   # a round's: the signs before this round's pruning and training
  summary: dict = dataclasses.field(default_factory=dict)
  rundir: RunDir | None = None           # a final training's: its run directory ...
  reference: str | None = None           # ... the retrained network of its source round and seed (`lmc_barrier`)
  peers: tuple[str, ...] = ()            # ... and the other seeds' networks of its start (`sgd_noise_barrier`)
  load: Callable[[str], train.TrainState] | None = None  # a network of the run directory, by name
  measured: dict = dataclasses.field(default_factory=dict)  # what one analysis measured that another reuses


@dataclasses.dataclass(frozen=True)
class Field:
  """A scalar an analysis records, as the study's tables show it."""
  name: str                  # the record's key (a study.csv column for a final training's analysis)
  label: str                 # its heading in study.md
  percent: bool = False      # a fraction, shown in %
  get: Callable[[dict], Any] | None = None  # how to read it from a record, where it is no plain key

  def of(self, record: dict):
    return self.get(record) if self.get else record.get(self.name)

  def show(self, record: dict) -> str:
    value = self.of(record)
    return 'n/a' if value is None else f'{100 * value:.2f}' if self.percent else f'{value:.2f}'


@dataclasses.dataclass(frozen=True)
class Analysis:
  """A measurement of trained networks: what it records, where it shows, and what it needs."""
  name: str
  of: str                                  # 'round' or 'final'
  compute: Callable[[Setup, Network], dict]
  key: str                                 # its main output field: a record that has it needs no recomputing
  category: str                            # where its seconds go in the time account
  fields: tuple[Field, ...] = ()           # its scalars in study.csv (final) or the pruning tables (round)
  line: Callable[[dict], str | None] = lambda record: None  # its part of the round or final line a run prints
  in_memory: bool = False                  # needs the dataset in memory (error barriers re-estimate statistics)
  current: Callable[[dict, Network], bool] = lambda stored, network: True  # whether a stored result still holds


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
  ANALYSES[analysis.name] = analysis
  return analysis


def check(config) -> None:
  """Raises UserError unless `config.analyses` names registered analyses only."""
  unknown = [name for name in config.analyses if name != 'all' and name not in ANALYSES]
  if unknown:
    raise UserError(f'--config.analyses has {", ".join(map(repr, unknown))}; each must be \'all\' or one of '
                    f'{", ".join(ANALYSES)}')


def applicable(setup: Setup, of: str) -> list[Analysis]:
  """The analyses of `of` ('round' or 'final') that `config.analyses` selects and the data allow. Asking by name for
  one that needs the data in memory, on a streamed dataset, is refused."""
  config = setup.config
  check(config)
  chosen = []
  for analysis in ANALYSES.values():
    if analysis.of != of or not config_lib.analysis_selected(config, analysis.name):
      continue
    if analysis.in_memory and setup.streamed:
      if analysis.name in config.analyses:
        raise UserError(f'--config.analyses has {analysis.name}, which needs {config.dataset} in memory (it streams '
                        f'from disk); leave it out')
      continue
    chosen.append(analysis)
  return chosen


def line_parts(record: dict, of: str) -> list[str]:
  """The analyses' parts of a round or final line, in registry order, for those the record holds."""
  return [part for a in ANALYSES.values() if a.of == of for part in [a.line(record)] if part]


def analyse(setup: Setup, rundir: RunDir, of: str, network: Network) -> dict:
  """Every applicable analysis of `network`, each read back if stored (or recorded in its summary by an earlier
  aws_jax), else computed and stored; merged into one dict, time fields summed."""
  merged = {}
  for analysis in applicable(setup, of):
    if analysis.key in network.summary:
      continue
    path = rundir.analysis(network.name, analysis.name)
    result = None
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
      result = result if analysis.current(result, network) else None
    if result is None:
      timer = timing.Timer()
      with timer(analysis.category):
        result = analysis.compute(setup, network)
      result = {**result, **timer.fields()}
      if reporting.is_main_process():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        reporting.write_json(path, result)
    merged = timing.merged(merged, result)
  return merged


def stored(rundir: RunDir, network: str) -> dict:
  """Every stored analysis of `network`, merged (time fields summed)."""
  directory = rundir.analyses_of(network)
  merged = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    with open(os.path.join(directory, name)) as f:
      merged = timing.merged(merged, json.load(f))
  return merged


# --- Shared inputs, built once per setup. -------------------------------------------------------------------------

def path_data(setup: Setup) -> barrier.PathData:
  """What error barriers are measured on, as `config.barrier` says; built once per setup."""
  if setup.streamed:
    raise UserError(f'error barriers need {setup.config.dataset} in memory; leave them out of --config.analyses')
  config = setup.config
  return setup.built('path_data', lambda: barrier.path_data(
      setup.train_images, setup.test_images, setup.test_labels, setup.dataset.mean, setup.dataset.std,
      batch_size=config.batch_size, bn_batches=config.barrier.bn_batches, eval_batch_size=config.eval_batch_size,
      reestimate=config.barrier.reestimate, augmentation=setup.dataset.augmentation))


def recalibrated(setup: Setup, state: train.TrainState) -> train.TrainState:
  """`state` with BatchNorm statistics re-estimated at α = 0 on training batches (`barrier.bn_batches` of them;
  one epoch if 0), as `barrier.reestimate` says and as the barrier's points are."""
  def build():
    count = setup.config.barrier.bn_batches or -1
    batches = sharding.put(barrier.bn_batch_indices(setup.dataset.num_train, setup.config.batch_size, count),
                           sharding.replicated(setup.mesh))
    reestimate = jax.jit(conv.using(setup.config.conv, functools.partial(barrier.reestimate_batch_stats, setup.model,
                                           method=setup.config.barrier.reestimate,
                                           augmentation=setup.dataset.augmentation)),
                         compiler_options=conv.compiler_options())
    return lambda s: reestimate(s.params, s.batch_stats, setup.train_images, batches, setup.dataset.mean,
                                setup.dataset.std)
  return state.replace(batch_stats=setup.built('reestimate', build)(state))


# --- The registered analyses. -------------------------------------------------------------------------------------

def recalibrated_metrics(setup: Setup, network: Network) -> dict:
  """The network's test loss and accuracy with BatchNorm statistics re-estimated at α = 0, measured once per network
  (the recalibrated accuracy and the ψ-reset path's α = 1 point are this one measurement)."""
  if 'recalibrated' not in network.measured:
    network.measured['recalibrated'] = setup.evaluate(recalibrated(setup, network.state))
  return network.measured['recalibrated']


def _recalibrated_accuracy(setup: Setup, network: Network) -> dict:
  """Test loss and accuracy with BatchNorm statistics re-estimated at α = 0: under AWS the running statistics were
  gathered under random α and can mislead; this measures the network that is evaluated and transferred."""
  return {f'recalibrated_test_{k}': v for k, v in recalibrated_metrics(setup, network).items()}


def _psi_reset(setup: Setup, network: Network) -> dict:
  """The error barrier (points of test error) between the network and itself with ψ reset; the curve and errors.
  Its α = 1 point is the network itself with statistics re-estimated on the path's batches: the recalibrated
  measurement, shared (with `barrier.bn_batches` 0, the network's own statistics: the round's test metrics)."""
  n = setup.dataset.num_test
  if setup.config.barrier.bn_batches:
    own = recalibrated_metrics(setup, network)
  else:
    own = {k: network.summary[f'test_{k}'] for k in ('loss', 'accuracy')} if 'test_loss' in network.summary else \
        setup.evaluate(network.state)
  end = (own['loss'] * n, round(own['accuracy'] * n))
  curve = barrier.psi_reset_curve(setup.model, network.state, setup.is_norm, path_data(setup),
                                  setup.config.barrier.points, setup.config.barrier.chunk, end,
                                  impl=setup.config.conv)
  return {'psi_reset_barrier': curve['barrier'], 'psi_reset_curve': curve['curve'],
          'psi_reset_test_error': curve['test_error']}


def _sign_changes(setup: Setup, network: Network) -> dict:
  """How the surviving prunable weights' signs moved: since initialisation and since the previous round."""
  state = network.state
  since_init = pruning.sign_changes(state.init_params, state.params, state.mask, setup.prunable)
  alive_before = jax.tree.map(lambda s, m: np.where(m, s, 0).astype(s.dtype),  # on the host, as sign_flips
                              *jax.device_get((network.previous_signs, state.mask)))
  since_previous = pruning.sign_flips(alive_before, state.params, setup.prunable)
  return {'signs_changed_from_init': since_init['overall'],
          'signs_changed_from_previous': since_previous['overall'],
          'signs_changed_layers': {layer: {'from_init': change, 'from_previous': since_previous['layers'][layer]}
                                   for layer, change in since_init['layers'].items()}}


@jax.jit
def _same_trees(a, b) -> jax.Array:
  """Whether two trees of the same structure hold equal arrays, in one program."""
  return jnp.all(jnp.stack([jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]))


def pair_curve(setup: Setup, network: Network, other: str) -> dict | None:
  """The error curve from `other` (α = 0) to `network` (α = 1), BatchNorm statistics re-estimated at each point as
  `config.barrier` says; None where the two do not share a mask. Stored once per pair (either order)."""
  first, second = sorted((network.name, other))
  path = network.rundir.analysis('pairs', f'{first}__{second}')
  if os.path.exists(path):
    with open(path) as f:
      stored_curve = json.load(f)
  else:
    a, b = network.state, network.load(other)
    if first != network.name:
      a, b = b, a
    same_mask = bool(_same_trees(a.mask, b.mask))
    stored_curve = {'a': first, 'b': second, 'shared_mask': same_mask}
    if same_mask:
      config = setup.config
      stored_curve.update(barrier.error_curve(setup.model, barrier.variables(a), barrier.variables(b),
                                              path_data(setup), config.barrier.points, config.barrier.chunk,
                                              impl=config.conv))
    if reporting.is_main_process():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      reporting.write_json(path, stored_curve)
  return stored_curve if stored_curve['shared_mask'] else None


def stored_pairs(rundir: RunDir) -> list[dict]:
  """Every stored pair curve of a run directory."""
  directory = rundir.analyses_of('pairs')
  curves = []
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    with open(os.path.join(directory, name)) as f:
      curves.append(json.load(f))
  return curves


def _lmc_barrier(setup: Setup, network: Network) -> dict:
  """Linear mode connectivity to the retrained network of the same source round and seed."""
  if network.reference is None:
    return {}
  curve = None if network.reference == network.name else pair_curve(setup, network, network.reference)
  return {'lmc_reference': network.reference, **({} if curve is None else {'lmc_barrier': curve['barrier']})}


def _sgd_noise_barrier(setup: Setup, network: Network) -> dict:
  """SGD-noise stability: the mean barrier to the networks of the same start trained with the other seeds."""
  barriers = [curve['barrier'] for curve in (pair_curve(setup, network, peer) for peer in network.peers) if curve]
  if not barriers:
    return {'sgd_noise_peers': list(network.peers)} if network.peers else {}
  return {'sgd_noise_barrier': float(sum(barriers) / len(barriers)), 'sgd_noise_peers': list(network.peers)}


def _psi(setup: Setup, network: Network) -> dict:
  """Where ψ went: per normalization layer the mean γ and mean |β|; the median layer's γ, and the share of γ entries
  below 0.2 (under AWS with weight decay on ψ, γ can decay far below its initial 1: the forward pass sees the
  trained γ only at α = 0)."""
  found = pruning.psi_statistics(jax.device_get(network.state.params), setup.is_norm)
  if not found['layers']:
    return {}
  return {'psi_gamma_median': found['gamma_median'], 'psi_gamma_low_share': found['gamma_below'],
          'psi_layers': found['layers']}


def _shown(key: str, text: Callable[[Any], str]) -> Callable[[dict], str | None]:
  return lambda record: text(record[key]) if record.get(key) is not None else None


register(Analysis('recalibrated_accuracy', 'round', _recalibrated_accuracy, key='recalibrated_test_accuracy',
                  category='reestimate', in_memory=True,
                  fields=(Field('recalibrated_test_accuracy', 'recalibrated test acc', percent=True),),
                  line=_shown('recalibrated_test_accuracy', lambda v: f'recalibrated {100 * v:6.2f}')))
register(Analysis('psi_reset_barrier', 'round', _psi_reset, key='psi_reset_barrier', category='barrier', in_memory=True,
                  fields=(Field('psi_reset_test_error', 'test error with ψ reset',
                                get=lambda r: r['psi_reset_test_error'][0] if 'psi_reset_test_error' in r else None),
                          Field('psi_reset_barrier', 'ψ-reset barrier (points)')),
                  line=_shown('psi_reset_barrier', lambda v: f'ψ-reset barrier {v:5.2f}')))
register(Analysis('sign_changes', 'round', _sign_changes, key='signs_changed_from_init', category='eval',
                  fields=(Field('signs_changed_from_init', 'signs changed since init (%)', percent=True),),
                  line=_shown('signs_changed_from_init', lambda v: f'signs changed {100 * v:5.2f}%')))
register(Analysis('psi', 'round', _psi, key='psi_gamma_median', category='eval',
                  fields=(Field('psi_gamma_median', 'median γ'),
                          Field('psi_gamma_low_share', 'γ < 0.2 (%)', percent=True)),
                  line=_shown('psi_gamma_median', lambda v: f'median γ {v:4.2f}')))
register(Analysis('lmc_barrier', 'final', _lmc_barrier, key='lmc_barrier', category='barrier', in_memory=True,
                  fields=(Field('lmc_barrier', 'LMC barrier to retrain (points)'),),
                  line=_shown('lmc_barrier', lambda v: f'LMC barrier to retrain {v:5.2f}'),
                  current=lambda stored, network: stored.get('lmc_reference') == network.reference))
register(Analysis('sgd_noise_barrier', 'final', _sgd_noise_barrier, key='sgd_noise_barrier', category='barrier',
                  in_memory=True, fields=(Field('sgd_noise_barrier', 'SGD-noise barrier (points)'),),
                  line=_shown('sgd_noise_barrier', lambda v: f'SGD-noise barrier {v:5.2f}'),
                  current=lambda stored, network: stored.get('sgd_noise_peers', []) == list(network.peers)))
