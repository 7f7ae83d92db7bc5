"""AWS on scikit-learn's digits (8×8 grey images, no download): the whole protocol in about a minute on 2 CPU cores.

Command:
  python -m aws_jax.main --config=configs/digits.py --workdir=runs/digits

Runs a dense warm-up, 8 AWS pruning rounds (16.8 % of the conv weights left), then final trainings from the
signed mask, the mask alone, and the trained weights. Expected (2-core CPU): dense ≈ 97–99 % test accuracy, and the
signed-mask transfer within a couple of points of it. `:lrr` gives the same run without AWS interpolation.

`:study` is a quick study (AWS and LRR, three starts and dense, 3 seeds; about 3 minutes on 2 CPU cores):
  python -m aws_jax.study --config=configs/digits.py:study --workdir=runs/digits_study
"""
from aws_jax.config import METHODS, base_config, check_preset

PRESETS = (*METHODS, 'study')  # a method's one run (aws+X: --config.method=aws+X), or the study grid


def get_config(preset: str = 'aws'):
  """PRESET: the method ('aws', 'lrr', ...) of one run, or 'study' (the grid of `python -m aws_jax.study`)."""
  check_preset(preset, PRESETS)
  config = base_config()
  config.dataset = 'digits'
  config.model = 'small_cnn'        # 4 convs (32, 32, 64, 64) with BatchNorm, max-pools, a dense classifier
  config.method = 'aws' if preset == 'study' else preset  # 'aws' or 'lrr' (configs/digits.py:lrr)
  config.batch_size = 64
  config.eval_batch_size = 360      # the whole test split at once
  config.optimizer.lr = 0.05
  config.prune.warmup_epochs = 10
  config.prune.rounds = 8
  config.prune.round_epochs = 5
  config.final.epochs = 20
  config.final.seeds = (2,)
  config.checkpoint_every_epochs = 5
  if preset == 'study':
    config.final.epochs = 10
    config.checkpoint_every_epochs = 10
    config.study.methods = ('aws', 'lrr')
    config.study.starts = ('signed', 'mask', 'random_signs', 'dense')
    config.study.seeds = (2, 3, 4)
  return config
