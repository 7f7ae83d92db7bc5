"""The config schema every configs/*.py starts from, and its validation."""
import ml_collections

from aws_jax import data, models
from aws_jax.errors import UserError

METHODS = ('aws', 'lrr')
STAGES = ('all', 'prune', 'final')
MODES = ('signed', 'mask', 'retrain')
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('step', 'cosine', 'constant')
COMPUTE_DTYPES = ('float32', 'bfloat16')

# Keys that may change between two invocations on the same workdir: they pick what to run, not what a run is.
RERUN_KEYS = ('stage', 'data_workers', 'overwrite', 'progress', 'final.modes', 'final.seeds', 'final.source_round',
              'mesh.fsdp', 'barrier.points', 'barrier.bn_batches', 'barrier.chunk', 'barrier.psi_reset')


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with the reference protocol's CIFAR values where one applies."""
  config = ml_collections.ConfigDict()
  config.dataset = 'digits'         # one of aws_jax.data.DATASETS
  config.data_dir = ''              # '' means tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.download = False           # let tfds download and prepare a missing dataset (needs TensorFlow)
  config.data_workers = 0           # decoding processes of a streamed dataset (imagenet2012); 0: in this process
  config.model = 'small_cnn'        # one of aws_jax.models.MODELS
  config.seed = 1                   # pruning-stage seed: initialisation, data order, α draws
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.method = 'aws'             # 'aws' (ψ interpolation during pruning) or 'lrr' (plain LR rewinding)
  config.stage = 'all'              # 'prune', 'final' or 'all'

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'     # 'sgd' (momentum) or 'adam'; both with L2 weight decay
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4

  config.prune = ml_collections.ConfigDict()
  config.prune.warmup_epochs = 10   # round 0: dense training
  config.prune.rounds = 15          # round k leaves (1 - fraction)^k of the prunable weights
  config.prune.round_epochs = 10    # training after each pruning, at the constant base lr, fresh optimizer
  config.prune.fraction = 0.2       # of the alive weights removed per round (global magnitude)
  config.prune.exclude = ('classifier',)  # regexes of kernel paths never pruned

  config.final = ml_collections.ConfigDict()
  config.final.modes = MODES        # which starts to train from the source round's checkpoint
  config.final.source_round = -1    # -1: the last pruning round
  config.final.seeds = (2, 3)       # one final training per seed and mode
  config.final.epochs = 100
  config.final.schedule = 'step'    # 'step' (÷10 at 50 %, 75 %), 'cosine' (to lr·1e-3) or 'constant'

  config.barrier = ml_collections.ConfigDict()  # error barriers (aws_jax.barrier; METHOD.md, "Analysis")
  config.barrier.points = 11        # α = 0, 1/(points − 1), …, 1 along the linear path
  config.barrier.bn_batches = -1    # training batches re-estimating BatchNorm statistics at each α: -1 one epoch,
                                    # 0 none (the statistics are interpolated too)
  config.barrier.chunk = 0          # α points vmapped together; 0: all on an accelerator, 1 on CPU (faster there)
  config.barrier.psi_reset = True   # the pruning stage records the ψ-reset barrier after every round

  config.compute_dtype = 'float32'  # 'bfloat16' on TPU/GPU: forward/backward in bf16, params and state float32
  config.mesh = ml_collections.ConfigDict()  # devices: the global batch is split over all of them
  config.mesh.fsdp = 1              # > 1: also split params and optimizer state over this many devices (FSDP)

  config.checkpoint_every_epochs = 10  # final-stage checkpoints within a run (pruning: after every round)
  config.overwrite = False          # start over in a workdir that holds a run of another config
  config.progress = True            # a progress bar per epoch
  return config


def _check(condition: bool, message: str):
  if not condition:
    raise UserError(message)


def _one_of(config, key: str, choices):
  value = config
  for part in key.split('.'):
    value = value[part]
  _check(value in choices, f'--config.{key}={value!r} is not one of {", ".join(map(str, choices))}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad value and what would be accepted."""
  _one_of(config, 'dataset', data.DATASETS)
  _one_of(config, 'model', models.MODELS)
  _one_of(config, 'method', METHODS)
  _one_of(config, 'stage', STAGES)
  _one_of(config, 'optimizer.name', OPTIMIZERS)
  _one_of(config, 'final.schedule', SCHEDULES)
  _one_of(config, 'compute_dtype', COMPUTE_DTYPES)
  _check(0 < config.prune.fraction < 1,
         f'--config.prune.fraction={config.prune.fraction} must lie strictly between 0 and 1')
  _check(config.data_workers >= 0, f'--config.data_workers={config.data_workers} must be >= 0')
  for key in ('batch_size', 'eval_batch_size', 'checkpoint_every_epochs'):
    _check(config[key] > 0, f'--config.{key}={config[key]} must be positive')
  _check(config.optimizer.lr > 0, f'--config.optimizer.lr={config.optimizer.lr} must be positive')
  _check(config.optimizer.weight_decay >= 0, '--config.optimizer.weight_decay must be >= 0')
  for key in ('warmup_epochs', 'round_epochs', 'rounds'):
    _check(config.prune[key] >= 0, f'--config.prune.{key}={config.prune[key]} must be >= 0')
  _check(config.final.epochs > 0, f'--config.final.epochs={config.final.epochs} must be positive')
  _check(-1 <= config.final.source_round <= config.prune.rounds,
         f'--config.final.source_round={config.final.source_round} is never reached: the pruning stage runs '
         f'rounds 0..{config.prune.rounds} (-1 means the last)')
  for mode in config.final.modes:
    _check(mode in MODES, f'--config.final.modes has {mode!r}; each must be one of {", ".join(MODES)}')
  _check(len(config.final.seeds) > 0, '--config.final.seeds is empty; give at least one seed')
  _check(config.barrier.points >= 2, f'--config.barrier.points={config.barrier.points} must be at least 2')
  _check(config.barrier.bn_batches >= -1,
         f'--config.barrier.bn_batches={config.barrier.bn_batches} must be -1 (one epoch), 0 (none) or positive')
  _check(config.barrier.chunk >= 0, f'--config.barrier.chunk={config.barrier.chunk} must be >= 0 (0: all points)')


def source_round(config: ml_collections.ConfigDict) -> int:
  """The pruning round the final stage starts from."""
  return config.prune.rounds if config.final.source_round == -1 else config.final.source_round


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The config as a flat dict of what determines a run's results (RERUN_KEYS left out)."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, name + '.')
      elif name not in RERUN_KEYS:
        flat[name] = list(value) if isinstance(value, tuple) else value

  walk(config, '')
  return flat
