"""What `python -m aws_jax.barrier` does around the maths of `aws_jax.barrier`: read two checkpoints (or a preset's,
the paper's comparisons), measure the error curve between them, write it as JSON and draw it.

The command line's alone: the library (`aws_jax.barrier`, `aws_jax.analyses`, the stages) never imports it.
"""
import json
import os
import re
import time

import jax

from aws_jax import analyses, barrier, plots, pruning, reporting, train
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError
from aws_jax.rundir import BARRIER_PRESETS as PRESETS, PRUNE, RunDir, final_preset, parse_checkpoint


def load_checkpoint(setup, spec: str, workdir: str) -> tuple[train.TrainState, dict, str]:
  """(state, summary, 'DIR:STEP') of the checkpoint `spec` names, for `setup` (an `engine.Setup`)."""
  directory, step = parse_checkpoint(spec, workdir)
  if not os.path.isdir(directory):
    raise UserError(f'no checkpoint directory {directory} (from {spec!r}, relative to --workdir={workdir})')
  checkpoints = Checkpoints(directory)
  steps = checkpoints.steps()
  step = steps[-1] if step is None and steps else step
  if step not in steps:
    checkpoints.close()
    raise UserError(f'{directory} has no checkpoint {step} (it has: {", ".join(map(str, steps)) or "none"}); '
                    f'name one as DIR:STEP')
  template = jax.eval_shape(lambda: setup.fresh_state(setup.config.seed, setup.optimizer('constant', 1)))
  try:
    state, summary = checkpoints.restore(step, template), checkpoints.summary(step)
  finally:
    checkpoints.close()
  return state, summary, f'{RunDir(workdir).relative(directory)}:{step}'


def compare(setup, workdir: str, *, preset: str | None = None, a: str | None = None, b: str | None = None,
            round_index: int = -1, seeds=()) -> dict:
  """The error curve between checkpoints `a` and `b`, or a preset's, JSON-ready, with a file name and a label.

  `setup` is an `engine.Setup` of the config that trained them; `config.barrier` sets the points, BatchNorm
  batches and chunk. Presets (docs/method.md, "Analysis"): 'lmc', signed-mask transfer vs. retrained network of one
  source round and seed; 'sgd_noise', signed-mask transfers of two seeds; 'psi_reset', a pruning round's solution
  vs. itself with ψ reset to its initial value. `round_index` -1: the config's source round ('lmc', 'sgd_noise')
  or the last saved round ('psi_reset'); `seeds` default to config.final.seeds.
  """
  start = time.time()
  if not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} does not exist: give the run directory of `python -m aws_jax.main`')
  if preset and preset not in PRESETS:
    raise UserError(f'--preset={preset!r} is not one of {", ".join(PRESETS)}')
  if not preset and not (a and b):
    raise UserError(f'name two checkpoints with --a and --b, or a comparison with --preset={"|".join(PRESETS)}')
  if preset == 'psi_reset':
    spec = RunDir('.').relative(RunDir('.').checkpoints(PRUNE)) + (f':{round_index}' if round_index >= 0 else '')
    state_a, summary_a, name_a = load_checkpoint(setup, spec, workdir)
    state_b = state_a.replace(params=pruning.reset_norm(state_a.params, state_a.init_params, setup.is_norm))
    summary_b, name_b = {}, f'{name_a} with ψ reset'
    name, label = f'psi_reset_round{summary_a["round"]}', f'round {summary_a["round"]}, ψ reset'
  else:
    if preset:
      a, b, name, label = final_preset(preset, setup.config, round_index, seeds)
    state_a, summary_a, name_a = load_checkpoint(setup, a, workdir)
    state_b, summary_b, name_b = load_checkpoint(setup, b, workdir)
    if not preset:
      name = '_vs_'.join(re.sub(r'[^\w.-]+', '-', os.path.basename(n.replace(':', '-'))) for n in (name_a, name_b))
      label = f'{name_a} vs {name_b}'
  barrier.check_compatible(barrier.variables(state_a), barrier.variables(state_b), state_a.mask, state_b.mask)
  data = analyses.path_data(setup)
  curve = barrier.error_curve(setup.model, barrier.variables(state_a), barrier.variables(state_b), data,
                              setup.config.barrier.points, setup.config.barrier.chunk, impl=setup.config.conv)
  method = (_workdir_config(workdir).get('method') or setup.config.method).upper()
  return {'name': name, 'label': f'{method} {label}' if preset else label, 'a': name_a, 'b': name_b,
          'a_recorded_test_accuracy': summary_a.get('test_accuracy'),
          'b_recorded_test_accuracy': summary_b.get('test_accuracy'),
          **curve, 'bn_batches': int(data.bn_batches.shape[0]), 'reestimate': data.reestimate,
          'wall_s': round(time.time() - start, 2)}


def _workdir_config(workdir: str) -> dict:
  path = RunDir(workdir).config
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def save(result: dict, workdir: str) -> tuple[str, str]:
  """Writes WORKDIR/barriers/NAME.json and NAME.png (the curve plotted); returns their paths."""
  directory = RunDir(workdir).barriers
  os.makedirs(directory, exist_ok=True)
  stem = os.path.join(directory, result['name'])
  reporting.write_json(stem + '.json', result)
  plots.plot_barriers({result['label']: result}, stem + '.png')
  return stem + '.json', stem + '.png'
