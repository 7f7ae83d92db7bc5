"""The config schema every configs/*.py starts from, and its validation.

Light on purpose (no JAX import): the command line checks a config within a second, before anything heavy loads.
"""
import dataclasses
import inspect
import re

import ml_collections

from aws_jax import starts
from aws_jax import datasets
from aws_jax.datasets import FACTS
from aws_jax.errors import UserError

MODELS = ('small_cnn', 'resnet20', 'resnet56', 'vgg11', 'vgg13', 'vgg16', 'vgg19', 'resnet50', 'resnet50_imagenet',
          'mobilenetv2', 'mobilenetv2_imagenet', 'efficientnet_b0', 'shufflenet', 'mlp_mixer')  # = models.MODELS


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A pruning method as orthogonal choices."""
  interpolate: bool          # AWS: ψ blended toward its initial value by a random α at every pruning-stage step
  rewind: str = 'lr'         # after each pruning, a `stages.REWINDS` entry: 'lr' keeps the weights (LR rewinding),
                             # 'init' sets them back to their initial values, 'warmup' to those at prune.rewind_epoch
  oneshot: bool = False      # one pruning to the final fraction after the warm-up instead of `rounds` rounds
  criterion: str = 'magnitude'  # which weights go: a `pruning.CRITERIA` entry ('magnitude': smallest |w|; 'random')


_RECIPES = {'lrr': Recipe(False), 'imp': Recipe(False, rewind='init'), 'imp_wr': Recipe(False, rewind='warmup'),
            'oneshot': Recipe(False, oneshot=True), 'random': Recipe(False, criterion='random')}  # a method: one entry
METHODS = ('aws', *_RECIPES)  # and 'aws+imp', 'aws+imp_wr', … (see `recipe`): a method is a registered recipe
SCOPES = ('global', 'layerwise')
STAGES = ('all', 'prune', 'final')
MODES = tuple(starts.STARTS)  # final-training starts (aws_jax/starts.py)
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('step', 'cosine', 'constant')
COMPUTE_DTYPES = ('float32', 'bfloat16')
SEEDS_AT_ONCE = ('auto', 'vmap', 'sequential')
INITS = ('authors', 'flax')  # = models.INITS
NORMALIZATIONS = ('authors', 'computed')
REESTIMATES = ('authors', 'average')

# The value of each key added since runs first recorded their config that reproduces how those runs were made (where
# that is not the key's default): a run directory written before a key existed resumes when it has this value.
LEGACY_DEFAULTS = {'init': 'flax', 'drop_connect': 0.2, 'normalization': 'computed', 'barrier.reestimate': 'average'}
CONV_IMPLS = ('auto', 'onednn', 'onednn_direct', 'xla', 'lax')  # = conv.IMPLS (aws_jax/conv.py says what each is)

# Keys that may change between two invocations on the same workdir: they pick what to run, not what a run is.
RERUN_KEYS = ('stage', 'study.methods', 'study.starts', 'study.source_rounds', 'study.seeds', 'study.pruning_seeds',
              'study.variants',
              'data_workers',
              'overwrite', 'progress', 'checkpoint_every_steps', 'final.modes', 'final.seeds', 'final.source_round',
              'final.seeds_at_once',
              'mesh.fsdp', 'barrier.points', 'barrier.bn_batches', 'barrier.chunk', 'barrier.psi_reset',
              'barrier.lmc', 'barrier.sgd_noise', 'analyses')
# The older switches of three analyses: False leaves the analysis out, as leaving it out of `analyses` does.
ANALYSIS_SWITCHES = {'psi_reset_barrier': 'psi_reset', 'lmc_barrier': 'lmc', 'sgd_noise_barrier': 'sgd_noise'}


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with the reference protocol's CIFAR values where one applies."""
  config = ml_collections.ConfigDict()
  config.dataset = 'digits'         # digits, fashion_mnist, cifar10, cifar100, tiny_imagenet, imagenet2012, or
                                    # your own: folder:PATH (class sub-folders) or npz:PATH (docs/config.md)
  config.data_dir = ''              # '' means tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.download = False           # let tfds download and prepare a missing dataset (needs TensorFlow)
  config.train_examples = 0         # > 0: train on only the first this many training examples (quick studies)
  config.data_workers = 0           # decoding processes of a streamed dataset (imagenet2012); 0: in this process
  config.model = 'small_cnn'        # small_cnn, resnet20, resnet56, vgg11/13/16/19, resnet50(_imagenet),
                                    # mobilenetv2(_imagenet), efficientnet_b0, shufflenet, mlp_mixer
  config.init = 'authors'           # initial weights and biases: 'authors' as the authors' PyTorch code draws them
                                    # (docs/method.md, "Initialisation"), 'flax' Flax's defaults (zero biases)
  config.drop_connect = 0.0         # efficientnet_b0 only: block b of 16 drops its residual branch with probability
                                    # drop_connect·b/16; the authors' runs had 0 (their code means 0.2)
  config.normalization = 'authors'  # 'authors': the reference's constants (CIFAR-10's for cifar100, ImageNet's for
                                    # tiny_imagenet), computed for other datasets; 'computed': the training set's
  config.seed = 1                   # pruning-stage seed: initialisation, data order, α draws
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.method = 'aws'             # aws (LRR + ψ interpolation), lrr, imp, imp_wr, oneshot, random, or aws+<one of
                                    # these>: AWS's interpolation on another method (docs/method.md, "Methods")
  config.stage = 'all'              # 'prune', 'final' or 'all'

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'     # 'sgd' (momentum) or 'adam'; both with L2 weight decay
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.norm_weight_decay = True  # the decay reaches the normalization layers' scale and shift (ψ) too,
                                    # as in the authors' code; False: ψ is not decayed (docs/method.md, "ψ and decay")

  config.prune = ml_collections.ConfigDict()
  config.prune.warmup_epochs = 10   # round 0: dense training
  config.prune.rounds = 15          # round k leaves (1 - fraction)^k of the prunable weights
  config.prune.round_epochs = 10    # training after each pruning, at the constant base lr, fresh optimizer
  config.prune.fraction = 0.2       # of the alive weights removed per round (global magnitude)
  config.prune.exclude = ('classifier',)  # regexes of kernel paths never pruned
  config.prune.scope = 'global'     # 'global' (one threshold over all layers) or 'layerwise' (each layer the fraction)
  config.prune.rewind_epoch = 1     # imp_wr: after each pruning, weights go back to their values at this warm-up epoch

  config.final = ml_collections.ConfigDict()
  config.final.modes = ('signed', 'mask', 'retrain')  # starts trained from the source round: also random_signs,
                                    # random_mask, dense (docs/method.md, "Stage 2")
  config.final.source_round = -1    # -1: the last pruning round
  config.final.seeds = (2, 3)       # one final training per seed and mode
  config.final.epochs = 100
  config.final.seeds_at_once = 'auto'  # 'vmap': the seeds of a start train together as one vmapped program (faster on
                                    # accelerators and small models); 'sequential'; 'auto': vmap except on CPU
  config.final.signed_mask = ''     # a signs file (python -m aws_jax.signs export): final trainings from it alone
  config.final.schedule = 'step'    # 'step' (÷10 at 50 %, 75 %), 'cosine' (to lr·1e-3) or 'constant'

  config.barrier = ml_collections.ConfigDict()  # error barriers (aws_jax.barrier; docs/method.md, "Analysis")
  config.barrier.points = 11        # α = 0, 1/(points − 1), …, 1 along the linear path
  config.barrier.bn_batches = -1    # training batches re-estimating BatchNorm statistics at each α: -1 one epoch,
                                    # 0 none (the statistics are interpolated too)
  config.barrier.reestimate = 'average'  # how: 'average' of un-augmented batches' statistics; 'authors' as the
                                    # reference, fresh statistics, augmented batches, momentum 0.1 (docs/method.md)
  config.barrier.chunk = 0          # α points vmapped together; 0: all on an accelerator, 1 on CPU (faster there)
  config.barrier.psi_reset = True   # False: as leaving psi_reset_barrier out of `analyses` (the older spelling)
  config.barrier.lmc = True         # False: as leaving lmc_barrier out of `analyses` (the older spelling)
  config.barrier.sgd_noise = True   # False: as leaving sgd_noise_barrier out of `analyses` (the older spelling)

  config.analyses = ('all',)        # measurements of trained networks (aws_jax/analyses.py, docs/config.md): 'all'
                                    # registered ones, or names, e.g. ('recalibrated_accuracy', 'psi', 'lmc_barrier')

  config.study = ml_collections.ConfigDict()  # python -m aws_jax.study: the paper's comparisons as one grid
  config.study.methods = ('aws', 'lrr')   # one pruning stage per method (any --config.method value)
  config.study.starts = ('signed', 'mask', 'random_signs', 'random_mask', 'dense')  # final-training starts
                                          # compared (final.modes of each method's run)
  config.study.source_rounds = (-1,)      # pruning rounds the starts come from; -1: the last
  config.study.seeds = (2, 3, 4)          # one final training per (method, start, round, seed)
  config.study.pruning_seeds = ()         # pruning runs per method: () one, with `seed`; else one per seed listed
  config.study.variants = ()              # ablations: ((name, {key: value}), ...), each variant's overrides of the
                                          # runs' config, trained under the same seeds and compared pairwise, e.g.
                                          # "(('paper', {}), ('wd5e-3', {'optimizer.weight_decay': 5e-3}))"

  config.compute_dtype = 'float32'  # 'bfloat16' on TPU/GPU: forward/backward in bf16, params and state float32
  config.conv = 'auto'              # convolutions on CPU: 'onednn' (Winograd where it suits), 'onednn_direct', 'xla',
                                    # 'lax' (plain ops, as on GPU/TPU), 'auto' (oneDNN where built, else 'xla')
  config.mesh = ml_collections.ConfigDict()  # devices: the global batch is split over all of them
  config.mesh.fsdp = 1              # > 1: also split params and optimizer state over this many devices (FSDP)

  config.checkpoint_every_epochs = 10  # final-stage checkpoints within a run (pruning: after every round)
  config.checkpoint_every_steps = 0    # > 0: also a checkpoint every this many steps inside a round or epoch, so a
                                       # killed run loses at most that much (SIGTERM / SIGINT always checkpoint)
  config.overwrite = False          # start over in a workdir that holds a run of another config
  config.progress = True            # a progress bar per epoch
  return config


def check_preset(preset: str, presets) -> str:
  """`preset` (a config file's :PRESET) if it is one of `presets`; else a ValueError naming them all."""
  if preset not in presets:
    raise ValueError(f'unknown preset {preset!r}; choose one of {", ".join(presets)}')
  return preset


def analysis_selected(config: ml_collections.ConfigDict, name: str) -> bool:
  """Whether `config.analyses` selects the analysis `name` ('all', or by name) and no older switch turns it off."""
  switch = ANALYSIS_SWITCHES.get(name)
  return ('all' in config.analyses or name in config.analyses) and (switch is None or config.barrier[switch])


def _check(condition: bool, message: str):
  if not condition:
    raise UserError(message)


def _one_of(config, key: str, choices):
  value = config
  for part in key.split('.'):
    value = value[part]
  _check(value in choices, f'--config.{key}={value!r} is not one of {", ".join(map(str, choices))}')


def _check_in_memory_analyses(config: ml_collections.ConfigDict) -> None:
  """Error barriers re-estimate BatchNorm statistics from the data in memory: refused, before anything runs, on a
  dataset that streams from disk."""
  registered = FACTS.get(config.dataset)
  asked = [switch for switch in ('psi_reset', 'lmc', 'sgd_noise') if config.barrier[switch]]
  _check(not (registered and registered.streamed and asked),
         f'--config.dataset={config.dataset} streams from disk, but error barriers need the data in memory; add '
         + ' '.join(f'--config.barrier.{switch}=False' for switch in asked))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad value and what would be accepted."""
  datasets.check(config.dataset)
  _check_in_memory_analyses(config)
  _one_of(config, 'model', MODELS)
  recipe(config.method)
  _one_of(config, 'prune.scope', SCOPES)
  _check(0 <= config.prune.rewind_epoch <= config.prune.warmup_epochs,
         f'--config.prune.rewind_epoch={config.prune.rewind_epoch} must lie in 0..prune.warmup_epochs '
         f'({config.prune.warmup_epochs})')
  _one_of(config, 'stage', STAGES)
  _one_of(config, 'optimizer.name', OPTIMIZERS)
  _one_of(config, 'final.schedule', SCHEDULES)
  _one_of(config, 'compute_dtype', COMPUTE_DTYPES)
  _one_of(config, 'conv', CONV_IMPLS)
  _one_of(config, 'final.seeds_at_once', SEEDS_AT_ONCE)
  _one_of(config, 'init', INITS)
  _one_of(config, 'normalization', NORMALIZATIONS)
  _one_of(config, 'barrier.reestimate', REESTIMATES)
  _check(0 <= config.drop_connect < 1, f'--config.drop_connect={config.drop_connect} must lie in [0, 1)')
  _check(0 < config.prune.fraction < 1,
         f'--config.prune.fraction={config.prune.fraction} must lie strictly between 0 and 1')
  _check(config.train_examples >= 0, f'--config.train_examples={config.train_examples} must be >= 0 (0: all)')
  _check(config.data_workers >= 0, f'--config.data_workers={config.data_workers} must be >= 0')
  _check(config.checkpoint_every_steps >= 0,
         f'--config.checkpoint_every_steps={config.checkpoint_every_steps} must be >= 0 (0: off)')
  for key in ('batch_size', 'eval_batch_size', 'checkpoint_every_epochs'):
    _check(config[key] > 0, f'--config.{key}={config[key]} must be positive')
  _check(config.optimizer.lr > 0, f'--config.optimizer.lr={config.optimizer.lr} must be positive')
  _check(config.optimizer.weight_decay >= 0, '--config.optimizer.weight_decay must be >= 0')
  _check(isinstance(config.optimizer.norm_weight_decay, bool),
         f'--config.optimizer.norm_weight_decay={config.optimizer.norm_weight_decay!r} must be True or False')
  for key in ('warmup_epochs', 'round_epochs', 'rounds'):
    _check(config.prune[key] >= 0, f'--config.prune.{key}={config.prune[key]} must be >= 0')
  _check(config.final.epochs > 0, f'--config.final.epochs={config.final.epochs} must be positive')
  _check(-1 <= config.final.source_round <= last_round(config),
         f'--config.final.source_round={config.final.source_round} is never reached: the pruning stage runs '
         f'rounds 0..{last_round(config)} (-1 means the last)')
  for mode in config.final.modes:
    _check(mode in MODES, f'--config.final.modes has {mode!r}; each must be one of {", ".join(MODES)}')
    _check(not (config.final.signed_mask and starts.get(mode).needs_source),
           f'final.modes has {mode}, which needs the trained source network, not a signs file (it holds no weights '
           f'and no ψ): drop it, or run from the pruning workdir without --config.final.signed_mask')
  _check(len(config.final.seeds) > 0, '--config.final.seeds is empty; give at least one seed')
  for key, value in (('seed', config.seed), ('final.seeds', config.final.seeds), ('study.seeds', config.study.seeds),
                     ('study.pruning_seeds', config.study.pruning_seeds)):  # PRNG seeds
    values = value if isinstance(value, (tuple, list)) else (value,)
    _check(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values),
           f'--config.{key}={value!r}: seeds must be non-negative integers')
  _check(config.barrier.points >= 2, f'--config.barrier.points={config.barrier.points} must be at least 2')
  _check(config.barrier.bn_batches >= -1,
         f'--config.barrier.bn_batches={config.barrier.bn_batches} must be -1 (one epoch), 0 (none) or positive')
  _check(config.barrier.chunk >= 0, f'--config.barrier.chunk={config.barrier.chunk} must be >= 0 (0: all points)')


def recipe(method: str) -> Recipe:
  """What `method` does: 'aws' is LRR with ψ interpolation, 'aws+X' is method X with it."""
  parts = method.split('+')
  others = [p for p in parts if p != 'aws']
  base = others[0] if others else 'lrr'
  if len(others) > 1 or base not in _RECIPES or len(set(parts)) != len(parts):
    raise UserError(f'--config.method={method!r} is not one of {", ".join(METHODS)}, or aws+ one of those')
  return dataclasses.replace(_RECIPES[base], interpolate='aws' in parts)


def last_round(config: ml_collections.ConfigDict, method: str | None = None) -> int:
  """The last pruning round of `method` (default `config.method`): `rounds`, or 1 for a one-shot method."""
  return 1 if recipe(method or config.method).oneshot else config.prune.rounds


def round_fraction(config: ml_collections.ConfigDict, method: str | None = None) -> float:
  """The fraction of alive weights each pruning removes (one-shot: all rounds' worth at once)."""
  if recipe(method or config.method).oneshot:
    return 1 - (1 - config.prune.fraction) ** config.prune.rounds
  return config.prune.fraction


def round_epochs(config: ml_collections.ConfigDict, round_index: int, method: str | None = None) -> int:
  """Training epochs of a round: the warm-up, `round_epochs`, or all rounds' epochs for a one-shot method."""
  if round_index == 0:
    return config.prune.warmup_epochs
  return config.prune.round_epochs * (config.prune.rounds if recipe(method or config.method).oneshot else 1)


def source_round(config: ml_collections.ConfigDict) -> int:
  """The pruning round the final stage starts from."""
  return last_round(config) if config.final.source_round == -1 else config.final.source_round


SCHEMA = 2  # of config.json: 1 (no "schema" key) until keys added later could be told apart from changed ones


def fingerprint(config: ml_collections.ConfigDict, method: str | None = None) -> dict:
  """The config as a flat dict of what determines a run's results (RERUN_KEYS left out), with its schema version;
  `method` stands for `config.method` (a study's run directory of one method)."""
  flat = {'schema': SCHEMA}

  def walk(node, prefix):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, name + '.')
      elif name not in RERUN_KEYS:
        flat[name] = list(value) if isinstance(value, tuple) else value

  walk(config, '')
  if method is not None:
    flat['method'] = method
  return flat


def _legacy_value(key: str):
  """The value of `key` that reproduces runs made before it existed."""
  return LEGACY_DEFAULTS[key] if key in LEGACY_DEFAULTS else fingerprint(base_config()).get(key)


# Keys that decide nothing for some runs: where one does not apply, a record without it is no change.
_APPLIES = {'drop_connect': lambda flat: flat.get('model') == 'efficientnet_b0',
            'normalization': lambda flat: flat.get('dataset') in FACTS and FACTS[flat['dataset']].authors_constants}


def changed_keys(previous: dict, current: dict) -> list[str]:
  """The keys whose values differ between a recorded fingerprint and this one. A key the record lacks (written
  before the key existed) counts as changed only where it applies to this config (`_APPLIES`) and this config's
  value differs from `_legacy_value`."""
  changed = []
  for key in sorted((set(previous) | set(current)) - {'schema'}):
    if key in previous and key in current:
      if previous[key] != current[key]:
        changed.append(key)
    elif key in current:
      if current[key] != _legacy_value(key) and _APPLIES.get(key, lambda flat: True)(current):
        changed.append(key)
    # A key only the record has was removed from aws_jax: it decides nothing now.
  return changed


def refusal(root: str, previous: dict, current: dict, changed: list[str]) -> str:
  """The one-line refusal of a run directory whose recorded config differs in `changed`."""
  added = [k for k in changed if k not in previous]
  if added:
    flags = ' '.join(f'--config.{k}={_legacy_value(k)}' for k in added)
    return (f'{root} was written by an earlier aws_jax, before {", ".join(added)} existed; resume it with {flags} '
            f'(how it was made), or rerun with --config.overwrite=True to replace it, or choose another --workdir')
  key = changed[0]
  return (f'{root} holds a run with {key}={previous.get(key)!r} (this config: {current.get(key)!r}); rerun with '
          f'--config.overwrite=True to replace it, or choose another --workdir')


def describe_keys() -> str:
  """Every config key with its default and comment, read from `base_config`'s source (what --help prints)."""
  lines, last = [], None
  for line in inspect.getsource(base_config).splitlines():
    assignment = re.match(r'\s*config\.([\w.]+) = (.*?)\s*(?:#\s*(.*))?$', line)
    comment = re.match(r'\s*#\s*(.*)$', line)
    if assignment and 'ConfigDict()' not in assignment.group(2):
      key, value, note = assignment.groups()
      last = len(lines)
      lines.append(f'  --config.{key}={value}' + (f'\n      {note}' if note else ''))
    elif comment and last is not None and line.startswith(' ' * 20):
      lines[last] += ' ' + comment.group(1)
  return 'Config keys (override any with --config.KEY=VALUE; docs/config.md explains each):\n' + '\n'.join(lines)
