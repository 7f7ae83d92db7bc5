"""Every paper config end to end, on a small fake dataset of its name, image shape and classes: only the step counts
shrink (a warm-up epoch of 2 steps of 2 images, one pruning round, one final training of one start and one seed), so
each run proves that the config, its model, its data pipeline and its analyses fit together before anyone spends a
GPU-day on it. Each run compiles its model's steps, so each test takes tens of seconds to minutes on a CPU."""
import importlib.util

import jax
import numpy as np
import pytest

from aws_jax import cli, datasets, protocol
import fakes


def _presets(name: str) -> tuple[str, ...]:
  """The presets of the shipped config `name`."""
  spec = importlib.util.spec_from_file_location(name, cli.config_file(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return tuple(module.PRESETS)


PAPER_CONFIGS = (*(f'cifar100:{p}' for p in ('resnet50', 'mobilenetv2', 'efficientnet_b0', 'shufflenet')),
                 *(f'tiny_imagenet:{p}' for p in _presets('tiny_imagenet')),
                 *(f'imagenet:{p}' for p in ('resnet50', 'mobilenetv2', 'mixer')), 'vgg')
BATCH = 2
pytestmark = pytest.mark.paper_config  # -m 'not paper_config' leaves the set out of a quick run


@pytest.fixture(scope='session')
def fake_data_dir(tmp_path_factory):
  """`fake_data_dir(dataset)`: the data directory of a fake `dataset` with its registered image shape and classes,
  4 training and 2 test images (Tiny-ImageNet: one training image per class, as its loader checks), made once."""
  made = {}

  def make(name: str) -> str:
    if name not in made:
      directory = tmp_path_factory.mktemp(name)
      facts = datasets.FACTS[name]
      if name == 'tiny_imagenet':
        fakes.prepare_tiny_imagenet(directory / 'tiny-imagenet-200', facts.num_classes, validation=BATCH)
      elif name == 'imagenet2012':
        fakes.prepare_imagenet(directory, train=2 * BATCH, validation=BATCH)
      else:
        fakes.prepare_cifar(name, directory, {'train': 2 * BATCH, 'test': BATCH}, facts.num_classes)
      made[name] = str(directory)
    return made[name]

  return make


@pytest.fixture(autouse=True)
def fresh_compilation_caches():
  """Each config compiles its own large model: what one test compiled is freed before the next."""
  yield
  jax.clear_caches()


def shrunk(config, data_dir: str):
  """`config` with only its step counts shrunk, on the fake data in `data_dir`."""
  config.data_dir = data_dir
  config.batch_size = config.eval_batch_size = BATCH
  config.train_examples = 2 * BATCH if config.dataset == 'tiny_imagenet' else 0  # its fake has an image per class
  config.prune.update({'warmup_epochs': 1, 'rounds': 1, 'round_epochs': 1})
  config.final.update({'epochs': 1, 'modes': config.final.modes[:1], 'seeds': config.final.seeds[:1]})
  config.data_workers = 0  # 4 fake images: decoded in this process
  config.progress = False
  return config


@pytest.mark.parametrize('spec', PAPER_CONFIGS)
def test_paper_config_runs_end_to_end_on_fake_data(spec, fake_data_dir, tmp_path):
  config = cli.get_config(spec)
  facts = datasets.FACTS[config.dataset]
  results = protocol.run(shrunk(config, fake_data_dir(config.dataset)), str(tmp_path))
  assert [(r['round'], r['method'], r['epochs']) for r in results['rounds']] == [(0, 'aws', 1), (1, 'aws', 1)]
  assert [(f['mode'], f['seed'], f['epochs']) for f in results['final']] == [('signed', 2, 1)]
  for record in results['rounds'] + results['final']:
    assert np.isfinite(record['train_loss']) and 0 <= record['test_accuracy'] <= 1, record
  analyses = {'signs_changed_from_init': True, 'recalibrated_test_accuracy': not facts.streamed,
              'psi_reset_barrier': config.barrier.psi_reset and not facts.streamed}
  for key, configured in analyses.items():
    assert all((key in r) == configured for r in results['rounds']), key
