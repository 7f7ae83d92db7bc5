"""Error barrier between two checkpoints: `python -m aws_jax.barrier --config=CONFIG --workdir=RUN ...`.

  --preset=psi_reset [--round=K]      pruning round K (default: the last) vs. itself with ψ reset
  --preset=lmc [--round=K --seeds=S]  signed-mask transfer vs. retrained network (linear mode connectivity)
  --preset=sgd_noise [--seeds=2,3]    two signed-mask transfers of different seeds (SGD-noise stability)
  --a=DIR[:STEP] --b=DIR[:STEP]       any two checkpoints sharing a mask (DIR relative to --workdir, or absolute)

Writes WORKDIR/barriers/NAME.json (α, test error and loss along the path, the curve, the barrier) and NAME.png.
--config is the run's config; --config.barrier.{points,bn_batches,reestimate,chunk} set how the path is measured.
"""
from absl import app, flags
from ml_collections import config_flags

from aws_jax import barrier, cli, engine
from aws_jax import config as config_lib
from aws_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory: checkpoints are read and barriers/ written there.')
_PRESET = flags.DEFINE_enum('preset', None, barrier.PRESETS, 'A comparison of the paper (instead of --a, --b).')
_A = flags.DEFINE_string('a', None, 'Checkpoint DIR[:STEP] at α = 1, e.g. checkpoints/final/signed_round8_seed2.')
_B = flags.DEFINE_string('b', None, 'Checkpoint DIR[:STEP] at α = 0, e.g. checkpoints/final/retrain_round8_seed2.')
_ROUND = flags.DEFINE_integer('round', -1, 'Pruning round of a preset (-1: source round, or the last for psi_reset).')
_SEEDS = flags.DEFINE_list('seeds', [], 'Final-training seeds of a preset (default: config.final.seeds).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.check_no_arguments(argv)
  config = cli.load_config(_CONFIG)
  if bool(_PRESET.value) == bool(_A.value or _B.value):
    cli.exit_with(f'give either --preset={"|".join(barrier.PRESETS)} or --a and --b')
  try:
    seeds = [int(seed) for seed in _SEEDS.value]
  except ValueError:
    cli.exit_with(f'--seeds={",".join(_SEEDS.value)} must be integers, e.g. --seeds=2,3')
  try:
    config_lib.validate(config)
    result = barrier.compare(engine.make_setup(config), _WORKDIR.value, preset=_PRESET.value, a=_A.value,
                             b=_B.value, round_index=_ROUND.value, seeds=seeds)
    json_path, png_path = barrier.save(result, _WORKDIR.value)
  except UserError as e:
    cli.exit_with(e)
  errors = result['test_error']
  print(f'{result["label"]}: barrier {result["barrier"]:.2f} points (test error {errors[-1]:.2f} % at α = 1, '
        f'{errors[0]:.2f} % at α = 0, max {max(errors):.2f} %; {result["wall_s"]:.1f}s)\n{json_path}\n{png_path}',
        flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
