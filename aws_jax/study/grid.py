"""A study's grid, light (no JAX): its variants, pruning runs and final trainings, validated before anything runs."""
import re

import ml_collections

from aws_jax import config as config_lib
from aws_jax.errors import UserError
from aws_jax.rundir import StudyDir

DENSE = 'dense'
# Keys a variant cannot set: the grid's own axes, and what picks what to run rather than what a run is.
GRID_KEYS = {'method': 'study.methods', 'seed': 'study.pruning_seeds'}
# Keys a study's variants may differ in and still share one Setup (its data, model and compiled steps): the Setup's
# compiled functions are keyed by these (`engine.Setup.step`, `Setup.optimizer`).
SHARED_SETUP_PREFIXES = ('optimizer.', 'prune.', 'final.', 'method', 'seed')
VARIANT_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.+-]*')


def pruning_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The pruning runs' seeds: `study.pruning_seeds`, or `config.seed` alone."""
  return tuple(config.study.pruning_seeds) or (config.seed,)


def run_name(config: ml_collections.ConfigDict, method: str, pruning_seed: int) -> str:
  """The run directory's name (in its study directory) of `method`'s pruning run with `pruning_seed`."""
  return StudyDir.run_name(method, pruning_seed, config.seed)


def method_config(config: ml_collections.ConfigDict, method: str,
                  pruning_seed: int | None = None) -> ml_collections.ConfigDict:
  """`config` for one method's run directory: that method (and pruning seed), the study's seeds as final seeds."""
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.method = method
  derived.seed = config.seed if pruning_seed is None else pruning_seed
  derived.final.seeds = tuple(config.study.seeds)
  derived.final.source_round = -1
  return derived


def source_rounds(config: ml_collections.ConfigDict, method: str) -> list[int]:
  """The study's source rounds of `method`, −1 resolved to its last round, sorted, without repeats."""
  last = config_lib.last_round(config, method)
  return sorted({last if r == -1 else r for r in config.study.source_rounds})


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
  node = config
  *parents, leaf = key.split('.')
  for part in parents:
    node = node[part]
  node[leaf] = tuple(value) if isinstance(value, list) else value


def variants(config: ml_collections.ConfigDict) -> list[tuple[str | None, ml_collections.ConfigDict]]:
  """[(name, its config)] of `study.variants`, each its overrides applied to `config` (without variants: one, named
  None, the config itself). Raises UserError on the first bad variant."""
  given = config.study.variants
  if not given:
    return [(None, config)]
  if not isinstance(given, (tuple, list)) or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in given):
    raise UserError(f'--config.study.variants={given!r} must be pairs of a name and overrides, e.g. '
                    f'"((\'paper\', {{}}), (\'no_psi_decay\', {{\'optimizer.norm_weight_decay\': False}}))"')
  names = [name for name, _ in given]
  if len(set(names)) < len(names):
    raise UserError(f'--config.study.variants names a variant twice ({", ".join(map(str, names))}); give each once')
  allowed = set(config_lib.fingerprint(config)) - {'schema'}
  found = []
  for name, overrides in given:
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
      raise UserError(f'--config.study.variants: {name!r} is no variant name (letters, digits, _ . + -: it names a '
                      f'directory)')
    if not isinstance(overrides, dict):
      raise UserError(f'--config.study.variants: {name}\'s overrides {overrides!r} must be a dict of config keys')
    derived = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
      if key in GRID_KEYS:
        raise UserError(f'--config.study.variants: {name} sets {key}, an axis of the grid itself; use '
                        f'--config.{GRID_KEYS[key]}')
      if key not in allowed:
        what = ('picks what to run, not what a run is' if key in config_lib.RERUN_KEYS or key.startswith('study.')
                else 'is not a config key (--help lists them)')
        raise UserError(f'--config.study.variants: {name} sets {key!r}, which {what}; a variant sets keys of the '
                        f'runs\' config, such as optimizer.weight_decay')
      try:
        _set(derived, key, value)
      except (TypeError, ValueError) as e:
        raise UserError(f'--config.study.variants: {name} sets {key}={value!r}: {e}') from None
    derived.study.variants = ()
    try:
      config_lib.validate(derived)
    except UserError as e:
      raise UserError(f'--config.study.variants: {name}: {e}') from None
    found.append((name, derived))
  return found


def shares_setup(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> bool:
  """Whether two configs differ only in keys that leave the data, the model and the analyses' inputs as they are (so
  that one `Setup` serves both)."""
  fa, fb = config_lib.fingerprint(a), config_lib.fingerprint(b)
  return all(fa.get(k) == fb.get(k) for k in set(fa) | set(fb) if not k.startswith(SHARED_SETUP_PREFIXES))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad value of the config, its variants or its grid; creates and runs nothing."""
  config_lib.validate(config)
  study = config.study
  for key in ('methods', 'starts', 'source_rounds', 'seeds', 'pruning_seeds'):
    if not study[key] and key != 'pruning_seeds':  # () there: one pruning run, with config.seed
      raise UserError(f'--config.study.{key} is empty; give at least one')
    if key != 'source_rounds' and len(set(study[key])) < len(study[key]):
      raise UserError(f'--config.study.{key}={tuple(study[key])} names one twice; give each once')
  for start in study.starts:
    if start not in config_lib.MODES:
      raise UserError(f'--config.study.starts has {start!r}; each must be one of {", ".join(config_lib.MODES)}')
  for _, variant in variants(config):
    for method in study.methods:
      try:
        config_lib.validate(method_config(variant, method))
      except UserError as e:
        raise UserError(f'--config.study.methods has {method!r}: {e}') from None
      last = config_lib.last_round(variant, method)
      for r in study.source_rounds:
        if not -1 <= r <= last:
          raise UserError(f'--config.study.source_rounds has {r}, never reached by {method}: its pruning stage runs '
                          f'rounds 0..{last} (-1 means the last)')


def plan(config: ml_collections.ConfigDict, dense: bool = True) -> dict[str, list[tuple[int, tuple[str, ...]]]]:
  """{method: [(source round, final.modes trained from it), ...]}: the grid as final-stage invocations of one
  pruning seed.

  `dense` goes to the first method only, from its last round, so widening the grid never moves it; and only to the
  first pruning seed's runs (`dense`=False for the others): no pruning run changes it.
  """
  starts = tuple(s for s in config.study.starts if s != DENSE)
  if config_lib.analysis_selected(config, 'lmc_barrier') and 'retrain' not in starts:
    starts += ('retrain',)  # the reference of the LMC barrier
  runs = {}
  for index, method in enumerate(config.study.methods):
    rounds = {r: starts for r in source_rounds(config, method)}
    if dense and index == 0 and DENSE in config.study.starts:
      last = config_lib.last_round(config, method)
      rounds[last] = rounds.get(last, ()) + (DENSE,)
    runs[method] = sorted(rounds.items())
  return runs
