"""The protocol's stages over one `Setup` and one `RunDir`: the pruning stage of a method, and final trainings of
starts × seeds from one of its rounds (or a signs file). Every round and final training resumes on its own."""
import contextlib
import json
import os
import time

import jax

from aws_jax import analyses, pruning, reporting, sharding, starts, timing, train
from aws_jax import config as config_lib
from aws_jax.checkpoints import Checkpoints
from aws_jax.engine import Setup
from aws_jax.errors import UserError
from aws_jax.loop import Member, Partial, stop, stop_requested, train_epochs
from aws_jax.rundir import PRUNE, RunDir

CHECKPOINT_RECORD = 'checkpoint_seconds'  # analyses/NETWORK/checkpoint_seconds.json: its last checkpoint's write
FINAL_PHASE = 1_000_000  # data-order phase of final trainings (pruning rounds use their round number)
START_KEY = 7  # folded into a final training's seed for the random draws of its start (random signs or mask)


def round_name(round_index: int) -> str:
  return f'round{round_index}'


def save_checkpoint(rundir: RunDir, network: str, checkpoints: Checkpoints, step: int, state: train.TrainState,
                    summary: dict, timer: timing.Timer, share: float = 1.0) -> None:
  """Saves `state` at `step` with `summary` and `timer`'s fields (× `share`) so far. The write's own seconds, which
  the checkpoint (immutable once saved) cannot hold, go beside it as a record that results.json merges like an
  analysis (`analyses.stored`); an earlier checkpoint's record, counted in this summary, goes first."""
  path = rundir.analysis(network, CHECKPOINT_RECORD)
  main = reporting.is_main_process()
  if main and os.path.exists(path):
    os.remove(path)
  before = timer.fields(share)
  with timer('checkpoint'):
    checkpoints.save(step, state, {**summary, **before})
  own = {key: round(value - before.get(key, 0.0), 3) for key, value in timer.fields(share).items()}
  if main:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    reporting.write_json(path, {key: value for key, value in own.items() if value > 0})


def checkpoint_record(rundir: RunDir, network: str) -> dict:
  """The seconds of `network`'s last checkpoint write (`save_checkpoint`); {} for run directories made before."""
  path = rundir.analysis(network, CHECKPOINT_RECORD)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# --- Pruning stage. -----------------------------------------------------------------------------------------------

def pruning_stage(setup: Setup, rundir: RunDir, method: str, log: reporting.MetricsLog) -> None:
  """Round 0 (dense warm-up), then `method`'s rounds of prune (+ rewind) + train, each followed by the round
  analyses; resumes where it stopped."""
  config = setup.config
  recipe = config_lib.recipe(method)
  tx = setup.optimizer('constant', config.prune.round_epochs)
  step_fn = setup.step('constant', config.prune.round_epochs, aws=recipe.interpolate)
  rewinds = recipe.rewind == 'warmup'
  with Checkpoints(rundir.checkpoints(PRUNE)) as checkpoints, \
       Checkpoints(rundir.checkpoints('rewind')) if rewinds else contextlib.nullcontext() as rewind:
    template = setup.abstract_state(tx)
    done = checkpoints.latest()
    state = setup.fresh_state(config.seed, tx) if done is None else checkpoints.restore(done, template)
    first, last = (0 if done is None else done + 1), config_lib.last_round(config, method)
    if done is not None:
      analyse_saved_rounds(setup, rundir, checkpoints, template)
      if first <= last:
        reporting.say(f'resuming after pruning round {done} from {checkpoints.directory}')
    for round_index in range(first, last + 1):
      start, timer = time.time(), timing.Timer()
      label = f'round {round_index}'
      partial = Partial(rundir.partial(label))
      resumed = partial.restore(template)
      if resumed is not None:
        previous = state if round_index == 0 else checkpoints.restore(round_index - 1, template)
        previous_signs = pruning.signs(previous.params, previous.mask)
        state, position = resumed
        reporting.say(f'resuming {label} at epoch {position.epoch + 1}, step {position.step}')
      else:
        previous_signs, position = pruning.signs(state.params, state.mask), None
        if round_index > 0:
          target = rewind_target(setup, recipe, rewind, template)
          state = prune_and_rewind(setup, state, method, round_index, tx, target)
      epochs = config_lib.round_epochs(config, round_index, method)

      def keep_rewind_point(epoch, state, metrics, round_index=round_index):
        del metrics
        if rewind is not None and round_index == 0 and epoch == config.prune.rewind_epoch:
          rewind.save(epoch, state, {'epoch': epoch})

      if rewind is not None and round_index == 0 and config.prune.rewind_epoch == 0 and position is None:
        rewind.save(0, state, {'epoch': 0})
      member = Member(config.seed, label, partial, keep_rewind_point)
      [state], [metrics] = train_epochs(setup, step_fn, [state], [member], phase=round_index,
                                        epochs=range(position.epoch if position else 0, epochs), log=log,
                                        resume=position, timer=timer)
      if not metrics:
        with timer('eval'):
          metrics = {'train_loss': float('nan'), 'train_accuracy': float('nan'),
                     **{f'test_{k}': v for k, v in setup.evaluate(state).items()}}
      summary = {'round': round_index, 'method': method,
                 'fraction_left': pruning.sparsity_summary(state.mask, setup.prunable)['fraction_left'], **metrics,
                 'epochs': epochs, 'wall_s': round(time.time() - start, 2)}
      save_checkpoint(rundir, round_name(round_index), checkpoints, round_index, state, summary, timer)
      partial.discard()
      found = analyses.analyse(setup, rundir, 'round', analyses.Network(round_name(round_index), state,
                                                                       previous_signs=previous_signs, summary=summary))
      reporting.say(round_line(timing.merged(summary, timer.fields(), found)))
      signum = stop_requested(at_boundary=True)
      if signum and round_index < last:
        raise stop(signum, f'after {label}')


def analyse_saved_rounds(setup: Setup, rundir: RunDir, checkpoints: Checkpoints, template) -> None:
  """The round analyses of saved rounds that lack them (a run stopped between a round's checkpoint and its
  analyses, or analyses added since)."""
  for round_index in checkpoints.steps():
    summary = checkpoints.summary(round_index)
    wanted = [a for a in analyses.applicable(setup, 'round') if a.key not in summary]
    if all(os.path.exists(rundir.analysis(round_name(round_index), a.name)) for a in wanted):
      continue
    before = (setup.fresh_state(setup.config.seed, setup.optimizer('constant', setup.config.prune.round_epochs))
              if round_index == 0 else checkpoints.restore(round_index - 1, template))
    analyses.analyse(setup, rundir, 'round', analyses.Network(
        round_name(round_index), checkpoints.restore(round_index, template),
        previous_signs=pruning.signs(before.params, before.mask), summary=summary))


def round_line(record: dict) -> str:
  """A pruning round as the one line a run prints for it."""
  parts = [f'round {record["round"]:2d}', f'{100 * record["fraction_left"]:6.2f}% left',
           f'train acc {100 * record["train_accuracy"]:6.2f}', f'test acc {100 * record["test_accuracy"]:6.2f}',
           *analyses.line_parts(record, 'round')]
  return ' | '.join(parts) + f' | {timing.total(record):.1f}s ({_time_shares(record)})'


def _time_shares(record: dict) -> str:
  seconds = {name: record.get(f'time_{name}_s', 0.0) for name in timing.CATEGORIES}
  return ', '.join(f'{name} {value:.1f}' for name, value in seconds.items() if value >= 0.05)


# Rewind targets: `target(setup, rewind checkpoints, template)` -> the state whose weights (and BatchNorm statistics)
# a pruning rewinds to, None to keep the trained ones. A method names one (config.Recipe).
REWINDS = {
    'lr': lambda setup, rewind, template: None,
    'init': lambda setup, rewind, template: setup.fresh_state(
        setup.config.seed, setup.optimizer('constant', setup.config.prune.round_epochs)),
    'warmup': lambda setup, rewind, template: rewind.restore(setup.config.prune.rewind_epoch, template),
}


def rewind_target(setup: Setup, recipe: config_lib.Recipe, rewind: Checkpoints | None, template):
  """The state whose weights a pruning rewinds to: None (LR rewinding), the initial state, or a warm-up epoch's."""
  return REWINDS[recipe.rewind](setup, rewind, template)


def prune_and_rewind(setup: Setup, state: train.TrainState, method: str, round_index: int, tx,
                     target) -> train.TrainState:
  """One pruning of `method`: a new mask (its `pruning.CRITERIA` entry, global or per layer), weights kept or
  rewound to `target`'s (with its BatchNorm statistics), a fresh optimizer."""
  config = setup.config
  recipe = config_lib.recipe(method)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), round_index)
  mask = pruning.CRITERIA[recipe.criterion](key, state.params, state.mask, setup.prunable,
                                            config_lib.round_fraction(config, method), config.prune.scope)
  source = state if target is None else target
  params = pruning.apply_mask(source.params, mask)
  batch_stats = sharding.copy(source.batch_stats)
  return setup.place(state.replace(params=params, batch_stats=batch_stats, mask=mask,
                                   opt_state=train.init_optimizer(tx, params)), tx)


# --- Final stage. -------------------------------------------------------------------------------------------------

def final_source(setup: Setup, rundir: RunDir, source_round: int | None):
  """What final trainings start from: (the source round's state, or None from a signs file; its signed mask; the
  round). `source_round` None: the config's signs file."""
  config = setup.config
  if source_round is None:
    from aws_jax import signs as signs_lib  # pylint: disable=import-outside-toplevel
    signed, metadata = signs_lib.load(config.final.signed_mask)
    signs_lib.check_fits(signed, metadata, params=setup.abstract_params(), model=config.model,
                         source=config.final.signed_mask)
    return None, signed, -1 if metadata['round'] is None else int(metadata['round'])  # -1: a file of no round
  with Checkpoints(rundir.checkpoints(PRUNE)) as prune_checkpoints:
    if source_round not in prune_checkpoints.steps():
      raise UserError(f'pruning round {source_round} was never reached in {rundir.root} (last complete round: '
                      f'{prune_checkpoints.latest()}); run the pruning stage first (--config.stage=prune or all)')
    prune_tx = setup.optimizer('constant', config.prune.round_epochs)
    source = prune_checkpoints.restore(source_round, setup.abstract_state(prune_tx))
  return source, pruning.signs(source.params, source.mask), source_round


def start_state(setup: Setup, start: str, signed, seed: int, tx, source: train.TrainState | None = None
                ) -> train.TrainState:
  """The network a final training of `start` (`aws_jax.starts`) begins from, placed, with a fresh optimizer."""
  entry = starts.get(start)
  if entry.needs_source and source is None:
    raise UserError(f'start {start!r} needs the trained source network, which a signs file does not hold: drop it '
                    f'from the starts, or run from the pruning workdir')
  if entry.needs_source:
    source = sharding.copy(source)  # the step donates its state
  inputs = starts.StartInputs(fresh=setup.fresh_state(seed, tx), signed=signed, source=source,
                              key=jax.random.fold_in(jax.random.PRNGKey(seed), START_KEY), is_norm=setup.is_norm,
                              prunable=setup.prunable)
  state = entry.build(inputs)
  return setup.place(state.replace(opt_state=train.init_optimizer(tx, state.params)), tx)


def final_stage(setup: Setup, rundir: RunDir, source_round: int | None, start_names, seeds,
                log: reporting.MetricsLog) -> None:
  """One final training per (seed, start) from `source_round` (None: the config's signs file); each resumes on its
  own. With `final.seeds_at_once` (on accelerators by default), the seeds of one start train together, vmapped."""
  source, signed, source_round = final_source(setup, rundir, source_round)
  together = seeds_together(setup, seeds)
  groups = ([(start, tuple(seeds)) for start in start_names] if together else
            [(start, (seed,)) for seed in seeds for start in start_names])
  for index, (start, group) in enumerate(groups):
    for summary in final_group(setup, rundir, source, signed, source_round, start, group, log):
      reporting.say(f'final {start:16s} from round {source_round} seed {summary["seed"]} | '
                    f'{100 * summary["fraction_left"]:6.2f}% left | test acc {100 * summary["test_accuracy"]:6.2f} | '
                    f'signs flipped {100 * summary["signs_flipped_since_start"]:5.2f}% | '
                    f'{timing.total(summary):.1f}s ({_time_shares(summary)})')
    signum = stop_requested(at_boundary=True)
    if signum and index < len(groups) - 1:
      raise stop(signum, f'after final {start}' + (f' seed {group[0]}' if len(group) == 1 else ''))
  analyse_finals(setup, rundir, source_round, start_names, seeds)


def analyse_finals(setup: Setup, rundir: RunDir, source_round: int, start_names, seeds) -> None:
  """The final analyses (`aws_jax.analyses`, of 'final') of every (start, seed) trained from `source_round`: each
  network with the retrained network of its seed as reference and the other seeds' networks of its start as peers."""
  if not analyses.applicable(setup, 'final'):
    return
  config = setup.config
  template = setup.abstract_state(setup.optimizer(config.final.schedule, config.final.epochs))
  loaded = {}

  def finished(name: str) -> bool:
    with Checkpoints(rundir.checkpoints(name)) as checkpoints:
      return checkpoints.latest() == config.final.epochs

  def load(name: str) -> train.TrainState:
    if name not in loaded:
      with Checkpoints(rundir.checkpoints(name)) as checkpoints:
        loaded[name] = checkpoints.restore(config.final.epochs, template)
    return loaded[name]

  for start in start_names:
    for seed in seeds:
      name = RunDir.final_name(start, source_round, seed)
      reference = RunDir.final_name('retrain', source_round, seed)
      peers = tuple(RunDir.final_name(start, source_round, other) for other in seeds if other != seed)
      found = analyses.analyse(setup, rundir, 'final', analyses.Network(
          name, load(name), rundir=rundir, reference=reference if finished(reference) else None, peers=peers,
          load=load))
      parts = analyses.line_parts(found, 'final')
      if parts:
        reporting.say(f'final {start:16s} from round {source_round} seed {seed} | ' + ' | '.join(parts))
    loaded.clear()


def seeds_together(setup: Setup, seeds) -> bool:
  """Whether the final seeds train vmapped: `final.seeds_at_once`, where one device holds the data in memory."""
  choice = setup.config.final.seeds_at_once
  if choice == 'auto':
    choice = 'sequential' if jax.default_backend() == 'cpu' else 'vmap'
  return choice == 'vmap' and len(seeds) > 1 and setup.mesh.size == 1 and not setup.streamed


def final_group(setup: Setup, rundir: RunDir, source, signed, source_round: int, start: str, seeds,
                log: reporting.MetricsLog) -> list[dict]:
  """The final trainings of `start` for `seeds`, as one population (vmapped when several), each resumed from its
  own checkpoints; returns their summaries. Seeds at different epochs, or with a partial checkpoint, train one by
  one (the same checkpoints either way)."""
  epochs = setup.config.final.epochs
  names = {seed: RunDir.final_name(start, source_round, seed) for seed in seeds}
  with contextlib.ExitStack() as stack:
    checkpoints = {seed: stack.enter_context(Checkpoints(rundir.checkpoints(names[seed]), max_to_keep=1))
                   for seed in seeds}
    done = {seed: checkpoints[seed].latest() or 0 for seed in seeds}
    pending = [seed for seed in seeds if done[seed] < epochs]
    partials = {seed: Partial(rundir.partial(f'final {names[seed]}')) for seed in pending}
    one_by_one = len(pending) > 1 and (len({done[seed] for seed in pending}) > 1 or
                                       any(p.exists() for p in partials.values()))
    if not one_by_one:
      if pending:
        train_population(setup, rundir, source, signed, source_round, start, names, pending, done, checkpoints,
                         partials, log)
      return [timing.merged(checkpoints[seed].summary(checkpoints[seed].latest()),
                            checkpoint_record(rundir, names[seed])) for seed in seeds]
  return [s for seed in seeds for s in final_group(setup, rundir, source, signed, source_round, start, (seed,), log)]


def train_population(setup: Setup, rundir: RunDir, source, signed, source_round: int, start: str, names: dict,
                     pending: list, done: dict, checkpoints: dict, partials: dict, log: reporting.MetricsLog) -> None:
  """`final_group`'s training of the `pending` seeds together, from their last checkpoints (`done`: epochs) or, for
  one seed, its partial checkpoint; each saved every `checkpoint_every_epochs` and at the end."""
  config = setup.config
  epochs = config.final.epochs
  tx = setup.optimizer(config.final.schedule, epochs)
  start_time, timer = time.time(), timing.Timer()
  template = setup.abstract_state(tx)
  states = [start_state(setup, start, signed, seed, tx, source) for seed in pending]
  start_signs = {seed: pruning.signs(s.params, s.mask) for seed, s in zip(pending, states)}
  position = None
  if len(pending) == 1:
    resumed = partials[pending[0]].restore(template)
    if resumed is not None and resumed[1].epoch >= done[pending[0]]:
      states[0], position = resumed
    elif done[pending[0]] > 0:
      states[0] = checkpoints[pending[0]].restore(done[pending[0]], template)
  else:
    states = [checkpoints[seed].restore(done[seed], template) if done[seed] else s
              for seed, s in zip(pending, states)]
  carries_signs = jax.tree.map(lambda norm: not norm, setup.is_norm)

  def saver(seed):
    def save(epoch, state, metrics):
      if epoch % config.checkpoint_every_epochs and epoch != epochs:
        return
      summary = {'mode': start, 'source_round': source_round, 'seed': seed,
                 'fraction_left': pruning.sparsity_summary(state.mask, setup.prunable)['fraction_left'], **metrics,
                 'signs_flipped_since_start': pruning.sign_flips(start_signs[seed], state.params,
                                                                 carries_signs)['overall'],
                 'epochs': epoch, 'wall_s': round(time.time() - start_time, 2)}
      save_checkpoint(rundir, names[seed], checkpoints[seed], epoch, state, summary, timer, 1 / len(pending))
    return save

  members = [Member(seed, f'final {names[seed]}', partials[seed], saver(seed)) for seed in pending]
  first = position.epoch if position else done[pending[0]]
  train_epochs(setup, setup.step(config.final.schedule, epochs, aws=False, seeds=len(pending)), states, members,
               phase=FINAL_PHASE, epochs=range(first, epochs), log=log, resume=position, timer=timer)
  for partial in partials.values():
    partial.discard()


# --- Results. -----------------------------------------------------------------------------------------------------

def saved_summaries(directory: str) -> list[dict]:
  """The summaries of every checkpoint in `directory`, oldest first."""
  with Checkpoints(directory) as checkpoints:
    return [checkpoints.summary(step) for step in checkpoints.steps()]


def collect_results(rundir: RunDir, final_epochs: int) -> dict:
  """results.json's content from the run directory: every saved round and finished final training, each with its
  stored analyses (and its last checkpoint write's seconds, stored beside them: `save_checkpoint`)."""
  rounds = [timing.merged(s, analyses.stored(rundir, round_name(s['round'])))
            for s in saved_summaries(rundir.checkpoints(PRUNE))]
  final = []
  for name in rundir.finals:
    summaries = saved_summaries(rundir.checkpoints(name))
    if summaries and summaries[-1]['epochs'] == final_epochs:
      final.append(timing.merged(summaries[-1], analyses.stored(rundir, name)))
  order = list(starts.STARTS)
  final.sort(key=lambda s: (s['source_round'], s['seed'], order.index(s['mode'])))
  return {'rounds': rounds, 'final': final}
