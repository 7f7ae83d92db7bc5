"""Error barrier between two checkpoints: `python -m aws_jax.barrier --config=CONFIG --workdir=RUN ...`.

  --preset=psi_reset [--round=K]      pruning round K (default: the last) vs. itself with ψ reset
  --preset=lmc [--round=K --seeds=S]  signed-mask transfer vs. retrained network (linear mode connectivity)
  --preset=sgd_noise [--seeds=2,3]    two signed-mask transfers of different seeds (SGD-noise stability)
  --a=DIR[:STEP] --b=DIR[:STEP]       any two checkpoints sharing a mask (DIR relative to --workdir, or absolute)

Writes WORKDIR/barriers/NAME.json (α, test error and loss along the path, the curve, the barrier) and NAME.png.
--config is the run's config; --config.barrier.{points,bn_batches,chunk} set how the path is measured.
"""
import os

from absl import app, flags

from aws_jax import cli
from aws_jax import config as config_lib
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError

_CONFIG = cli.define_config('The run\'s config.')
_WORKDIR = cli.define_path('workdir', None, 'The run directory: checkpoints are read and barriers/ written there.')
_PRESET = flags.DEFINE_enum('preset', None, rundir_lib.BARRIER_PRESETS,
                            'A comparison of the paper (instead of --a, --b).')
_A = flags.DEFINE_string('a', None, 'Checkpoint DIR[:STEP] at α = 1, e.g. checkpoints/final/signed_round8_seed2.')
_B = flags.DEFINE_string('b', None, 'Checkpoint DIR[:STEP] at α = 0, e.g. checkpoints/final/retrain_round8_seed2.')
_ROUND = flags.DEFINE_integer('round', -1, 'Pruning round of a preset (-1: source round, or the last for psi_reset).')
_SEEDS = flags.DEFINE_list('seeds', [], 'Final-training seeds of a preset (default: config.final.seeds).')
flags.mark_flags_as_required(['config', 'workdir'])
flags.adopt_module_key_flags(cli)


def check_finished(config, workdir: str, seeds: list[int]) -> None:
  """Raises UserError, reading directory names only, unless the checkpoints to compare are there; the message says
  which is missing and the command that makes it."""
  if not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} does not exist: give the run directory of `python -m aws_jax.main`')
  run = f'python -m aws_jax.main --config={flags.FLAGS["config"].serialize().split("=", 1)[1]} --workdir={workdir}'
  if _PRESET.value == 'psi_reset':
    spec = rundir_lib.RunDir(workdir).checkpoints(rundir_lib.PRUNE) + (f':{_ROUND.value}' if _ROUND.value >= 0 else '')
    rundir_lib.check_checkpoint(spec, workdir, f'run its pruning stage: {run} --config.stage=prune')
    return
  if _PRESET.value:
    a, b, _, _ = rundir_lib.final_preset(_PRESET.value, config, _ROUND.value, seeds)
    source = config_lib.source_round(config) if _ROUND.value < 0 else _ROUND.value
    final = (f'{run} --config.stage=final --config.final.source_round={source} '
             f'--config.final.seeds="({",".join(map(str, seeds or config.final.seeds))},)"')
    for spec in (a, b):
      rundir_lib.check_checkpoint(spec, workdir, f'train it: {final}')
    return
  for spec in (_A.value, _B.value):
    rundir_lib.check_checkpoint(spec, workdir, 'check --a / --b (relative to --workdir, or absolute)')


def main(argv):
  cli.check_no_arguments(argv)
  config = cli.load_config(_CONFIG)
  if bool(_PRESET.value) == bool(_A.value or _B.value):
    cli.exit_with(f'give either --preset={"|".join(rundir_lib.BARRIER_PRESETS)} or --a and --b')
  try:
    seeds = [int(seed) for seed in _SEEDS.value]
  except ValueError:
    cli.exit_with(f'--seeds={",".join(_SEEDS.value)} must be integers, e.g. --seeds=2,3')
  try:
    with cli.holding([_WORKDIR.value], 'barrier'):
      check_finished(config, _WORKDIR.value, seeds)
      from aws_jax import barrier_command, engine  # pylint: disable=import-outside-toplevel  # heavy: after the checks
      result = barrier_command.compare(engine.make_setup(config), _WORKDIR.value, preset=_PRESET.value, a=_A.value,
                                       b=_B.value, round_index=_ROUND.value, seeds=seeds)
      json_path, png_path = barrier_command.save(result, _WORKDIR.value)
  except UserError as e:
    cli.exit_with(e)
  errors = result['test_error']
  print(f'{result["label"]}: barrier {result["barrier"]:.2f} points (test error {errors[-1]:.2f} % at α = 1, '
        f'{errors[0]:.2f} % at α = 0, max {max(errors):.2f} %; {result["wall_s"]:.1f}s)\n{json_path}\n{png_path}',
        flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
