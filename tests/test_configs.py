"""Tests for configs/*.py: each loads as the CLI loads it, validates, and holds METHOD.md's protocol values."""
import importlib.util
import os

import pytest
from absl import flags
from ml_collections import config_flags

from aws_jax import config as config_lib
from aws_jax import models

# ml_collections loads config files with the deprecated `load_module`.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')

SGD_5E4 = {'optimizer.name': 'sgd', 'optimizer.momentum': 0.9, 'optimizer.weight_decay': 5e-4, 'batch_size': 128}
CIFAR_PROTOCOL = {'prune.warmup_epochs': 10, 'prune.rounds': 15, 'prune.round_epochs': 10, 'final.epochs': 100,
                  'final.schedule': 'step', **SGD_5E4}
IMAGENET_PROTOCOL = {'dataset': 'imagenet2012', 'prune.warmup_epochs': 20, 'prune.rounds': 10,
                     'prune.round_epochs': 5, 'final.epochs': 100, 'final.schedule': 'cosine'}
EVERY_RUN = {'method': 'aws', 'seed': 1, 'final.seeds': (2, 3), 'prune.fraction': 0.2,
             'prune.exclude': ('classifier',), 'init': 'authors', 'drop_connect': 0.0, 'normalization': 'authors'}

# 'file:preset': the values METHOD.md fixes for that run.
EXPECTED = {
    **{f'{file}:{model}': {'dataset': dataset, 'model': model, 'optimizer.lr': 0.05 if model == 'mobilenetv2' else 0.1,
                           **CIFAR_PROTOCOL}
       for file, dataset in (('cifar100', 'cifar100'), ('tiny_imagenet', 'tiny_imagenet'))
       for model in ('resnet50', 'mobilenetv2', 'efficientnet_b0', 'shufflenet')},
    'imagenet:resnet50': {'model': 'resnet50_imagenet', 'optimizer.name': 'adam', 'optimizer.lr': 1e-3,
                          'optimizer.weight_decay': 1e-5, 'batch_size': 256, **IMAGENET_PROTOCOL},
    'imagenet:mobilenetv2': {'model': 'mobilenetv2_imagenet', 'optimizer.name': 'sgd', 'optimizer.lr': 0.05,
                             'optimizer.momentum': 0.9, 'optimizer.weight_decay': 5e-5, 'batch_size': 256,
                             **IMAGENET_PROTOCOL},
    'imagenet:mixer': {'model': 'mlp_mixer', 'optimizer.name': 'adam', 'optimizer.lr': 1e-3,
                       'optimizer.weight_decay': 5e-5, 'batch_size': 512, **IMAGENET_PROTOCOL},
    'vgg:': {'dataset': 'cifar10', 'model': 'vgg16', 'optimizer.lr': 0.1, **CIFAR_PROTOCOL},
}


def load_as_cli(spec: str):
  """The config of `--config=configs/FILE.py:PRESET`, parsed by ml_collections as aws_jax.main does."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=flag_values)
  file, preset = spec.split(':')
  flag_values(['test', f'--config={os.path.join(CONFIGS, file)}.py' + (f':{preset}' if preset else '')])
  return flag_values.config


def lookup(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


@pytest.mark.parametrize('spec', EXPECTED)
def test_config_has_the_reference_protocol(spec):
  config = load_as_cli(spec)
  for key, value in {**EVERY_RUN, **EXPECTED[spec]}.items():
    assert lookup(config, key) == value, key
  assert config.model in models.MODELS
  config_lib.validate(config)


def test_digits_config_still_loads_and_validates():
  config_lib.validate(load_as_cli('digits:'))


@pytest.mark.parametrize('file', ['cifar100', 'tiny_imagenet', 'imagenet'])
def test_docstring_opens_with_its_command_and_unknown_presets_fail(file):
  spec = importlib.util.spec_from_file_location(file, os.path.join(CONFIGS, f'{file}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  command = module.__doc__.split('Command:\n')[1].splitlines()[0].strip()
  assert command.startswith(f'python -m aws_jax.main --config=configs/{file}.py:')
  assert command.split(':')[1].split()[0] in module.PRESETS
  with pytest.raises(ValueError, match='unknown preset'):
    module.get_config('resnet18')


def load_module(file: str):
  spec = importlib.util.spec_from_file_location(file, os.path.join(CONFIGS, f'{file}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('file', sorted(name[:-3] for name in os.listdir(CONFIGS)
                                        if name.endswith('.py') and name != '__init__.py'))
def test_every_config_refuses_an_unknown_preset_naming_its_presets_and_loads_each(file):
  module = load_module(file)
  presets = tuple(module.PRESETS)
  assert presets
  with pytest.raises(ValueError) as refused:
    module.get_config('no_such_preset')
  assert str(refused.value) == f"unknown preset 'no_such_preset'; choose one of {', '.join(presets)}"
  for preset in presets:
    config = load_as_cli(f'{file}:{preset}')
    config_lib.validate(config)
  config_lib.validate(load_as_cli(f'{file}:'))  # the default preset


def test_the_light_schema_names_every_model():
  assert config_lib.MODELS == models.MODELS
  assert config_lib.INITS == models.INITS


def test_legacy_defaults_are_valid_values_of_existing_keys():
  config = config_lib.base_config()
  for key, value in config_lib.LEGACY_DEFAULTS.items():
    *parents, leaf = key.split('.')
    node = lookup(config, '.'.join(parents)) if parents else config
    assert leaf in node, key
    node[leaf] = value
  config_lib.validate(config)


@pytest.mark.parametrize('key, value, fragment', [
    ('init', 'torch', 'one of authors, flax'), ('normalization', 'cifar', 'one of authors, computed'),
    ('drop_connect', 1.0, r'in \[0, 1\)')])
def test_bad_init_normalization_or_drop_connect_is_refused(key, value, fragment):
  config = config_lib.base_config()
  config[key] = value
  with pytest.raises(config_lib.UserError, match=f'--config.{key}=.*{fragment}'):
    config_lib.validate(config)


@pytest.mark.parametrize('spec', ['cifar100:resnet50', 'cifar100:shufflenet', 'tiny_imagenet:mobilenetv2', 'vgg:',
                                  'vgg:lrr', 'fashion_mnist:paper'])
def test_paper_configs_measure_barriers_as_the_authors_do(spec):
  """Fresh BatchNorm statistics, then one epoch of augmented batches at each point (the authors' script)."""
  config = load_as_cli(spec)
  assert config.barrier.reestimate == 'authors' and config.barrier.bn_batches == -1
