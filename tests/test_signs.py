"""Tests for aws_jax.signs: bit packing, the file, its refusals, the CLI on a digits run, and the PyTorch bridge."""
import hashlib
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from aws_jax import datasets, engine, models, protocol, pruning, signs, train
from aws_jax.checkpoints import Checkpoints
from aws_jax.errors import UserError
from aws_jax.rundir import RunDir
from conftest import REPO, SUBPROCESS_TIMEOUT, tiny_digits_config, without_times

pytestmark = pytest.mark.xdist_group('signs')  # its module-scoped fixtures: one worker builds them once

T, F = True, False
TINY_SIGNED = {'conv': {'kernel': np.array([[1, 0, -1], [0, -1, 1], [0, 0, 1]], np.int8)},
               'classifier': {'bias': np.array([-1, 1], np.int8)},
               'norm': {'scale': np.array([1, -1], np.int8)}}
TINY_PRUNABLE = {'conv': {'kernel': T}, 'classifier': {'bias': F}, 'norm': {'scale': F}}
TINY_IS_NORM = {'conv': {'kernel': F}, 'classifier': {'bias': F}, 'norm': {'scale': T}}
METADATA = {'model': 'small_cnn', 'num_classes': 10, 'image_shape': [8, 8, 1], 'dataset': 'digits', 'method': 'aws',
            'round': 8}


def flat(tree):
  return {path: np.asarray(leaf) for path, leaf in signs.flatten(tree).items()}


def assert_trees_equal(a, b):
  a, b = flat(a), flat(b)
  assert list(a) == list(b)
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_pack_writes_the_bits_by_hand():
  leaves, mask_bytes, sign_bytes = signs.pack(TINY_SIGNED, TINY_PRUNABLE, TINY_IS_NORM)
  assert leaves == [('classifier/bias', (2,), 'signed'), ('conv/kernel', (3, 3), 'prunable'),
                    ('norm/scale', (2,), 'norm')]
  # Mask: the kernel's 9 entries row by row, 1 where alive: 1 0 1 0 1 1 0 0 1, padded with zeros.
  assert mask_bytes == bytes([0b10101100, 0b10000000])
  # Signs, 1 for −1: the bias (−1, +1), then the alive kernel entries (+1, −1, −1, +1, +1).
  assert sign_bytes == bytes([0b10_01100_0])
  expected = {**TINY_SIGNED, 'norm': {'scale': np.array([1, 1], np.int8)}}  # norm leaves are not stored
  assert_trees_equal(signs.unpack(leaves, mask_bytes, sign_bytes), expected)


def test_encode_lays_out_magic_checksum_header_and_bits():
  data = signs.encode(TINY_SIGNED, prunable=TINY_PRUNABLE, is_norm=TINY_IS_NORM, metadata=METADATA)
  assert data[:8] == b'AWSSIGNS' and data[8:40] == hashlib.sha256(data[40:]).digest()
  header_length, = struct.unpack('<I', data[40:44])
  header = json.loads(data[44:44 + header_length])
  assert header['format'] == 1
  assert header['leaves'] == [['classifier/bias', [2], 'signed'], ['conv/kernel', [3, 3], 'prunable'],
                              ['norm/scale', [2], 'norm']]
  assert header['metadata']['fraction_left'] == 5 / 9 and header['metadata']['aws_jax_version']
  assert data[44 + header_length:] == bytes([0b10101100, 0b10000000, 0b10011000])
  leaves, _, metadata = signs.decode(data)
  assert [leaf.kind for leaf in leaves] == ['signed', 'prunable', 'norm']
  assert metadata == header['metadata'] and metadata['round'] == 8


@pytest.mark.parametrize('change, message', [
    (lambda t: t['classifier'].update(bias=np.array([0, 1], np.int8)), 'not prunable, yet has pruned'),
    (lambda t: t['conv'].update(kernel=np.full((3, 3), 2, np.int8)), r'only -1, 0 and \+1'),
])
def test_encode_refuses_what_is_no_signed_mask(change, message):
  tree = {k: dict(v) for k, v in TINY_SIGNED.items()}
  change(tree)
  with pytest.raises(ValueError, match=message):
    signs.encode(tree, prunable=TINY_PRUNABLE, is_norm=TINY_IS_NORM, metadata=METADATA)
  with pytest.raises(ValueError, match='lacks round'):
    signs.encode(TINY_SIGNED, prunable=TINY_PRUNABLE, is_norm=TINY_IS_NORM,
                 metadata={k: v for k, v in METADATA.items() if k != 'round'})


def pruned_small_cnn(rounds: int, num_classes: int = 10):
  """small_cnn's random params (norm scales of both signs) after `rounds` rounds of 20 % global pruning."""
  params = init_small_cnn(0, num_classes)
  prunable = pruning.prunable_leaves(params)
  prune = jax.jit(lambda p, m: pruning.prune_global_magnitude(p, m, prunable, 0.2))
  mask = pruning.full_mask(params)
  for _ in range(rounds):
    mask = prune(params, mask)
  return params, mask, prunable, pruning.norm_leaves(params)


def init_small_cnn(seed: int, num_classes: int = 10):
  """small_cnn's params, normal random (no compilation)."""
  shapes = jax.eval_shape(lambda: train.init_variables(models.create_model('small_cnn', num_classes),
                                                       jax.random.PRNGKey(0), (8, 8, 1)))[0]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32), shapes)


@pytest.fixture(scope='module')
def digits_eight_rounds():
  return pruned_small_cnn(8)


def test_save_load_round_trip_equals_pruning_signs(digits_eight_rounds, tmp_path):
  params, mask, prunable, is_norm = digits_eight_rounds
  signed = pruning.signs(params, mask)
  path = str(tmp_path / 'small_cnn.signs')
  signs.save(path, signed, prunable=prunable, is_norm=is_norm, metadata=METADATA)
  loaded, metadata = signs.load(path)
  expected = jax.tree.map(lambda s, norm: np.ones_like(s) if norm else s, signed, is_norm)
  assert_trees_equal(loaded, expected)  # norm leaves (not stored) come back +1, the rest exactly
  assert np.any(np.asarray(signed['BatchNorm_0']['scale']) < 0)
  assert_trees_equal(signs.mask_from_signs(loaded), mask)
  fresh = init_small_cnn(7)
  assert_trees_equal(pruning.signed_mask_transfer(fresh, loaded, is_norm),
                     pruning.signed_mask_transfer(fresh, signed, is_norm))
  assert metadata == {**METADATA, 'fraction_left': pruning.sparsity_summary(mask, prunable)['fraction_left'],
                      'aws_jax_version': metadata['aws_jax_version']}
  assert metadata['fraction_left'] == pytest.approx(0.8 ** 8, abs=1e-4)


def test_digits_file_is_at_most_a_sixteenth_of_the_float32_params(digits_eight_rounds):
  params, mask, prunable, is_norm = digits_eight_rounds
  data = signs.encode(pruning.signs(params, mask), prunable=prunable, is_norm=is_norm, metadata=METADATA)
  params_bytes = 4 * models.count_params(params)
  assert len(data) <= params_bytes / 16, (len(data), params_bytes)  # measured: 10,290 of 263,336 bytes (1/25.6)


@pytest.mark.parametrize('damage, message', [
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), 'corrupt'),
    (lambda d: d[:100], 'corrupt or truncated'),
    (lambda d: d[:20], 'corrupt or truncated'),
    (lambda d: b'PK\x03\x04' + d[4:], 'not an aws_jax signs file'),
    (lambda d: b'', 'not an aws_jax signs file'),
])
def test_a_damaged_file_is_refused_on_one_line(tmp_path, damage, message):
  data = signs.encode(TINY_SIGNED, prunable=TINY_PRUNABLE, is_norm=TINY_IS_NORM, metadata=METADATA)
  path = tmp_path / 'damaged.signs'
  path.write_bytes(damage(data))
  with pytest.raises(UserError, match=message) as raised:
    signs.load(str(path))
  assert '\n' not in str(raised.value) and str(path) in str(raised.value)
  with pytest.raises(UserError, match='cannot read'):
    signs.load(str(tmp_path / 'missing.signs'))


def test_check_fits_accepts_its_model_and_names_what_differs(digits_eight_rounds, tmp_path):
  params, mask, prunable, is_norm = digits_eight_rounds
  path = str(tmp_path / 'small_cnn.signs')
  signs.save(path, pruning.signs(params, mask), prunable=prunable, is_norm=is_norm, metadata=METADATA)
  signed, metadata = signs.load(path)
  signs.check_fits(signed, metadata, params=params, model='small_cnn', source=path)
  with pytest.raises(UserError, match='signs of a small_cnn model, not resnet20; set --config.model=small_cnn'):
    signs.check_fits(signed, metadata, params=params, model='resnet20', source=path)
  five_classes = pruned_small_cnn(0, num_classes=5)[0]
  with pytest.raises(UserError, match=r'classifier/bias has shape \(10,\), the model \(5,\)'):
    signs.check_fits(signed, metadata, params=five_classes, model='small_cnn', source=path)
  other = jax.eval_shape(lambda: train.init_variables(models.create_model('resnet20', 10), jax.random.PRNGKey(0),
                                                      (32, 32, 3)))[0]
  with pytest.raises(UserError, match='leaves missing') as raised:
    signs.check_fits(signed, {**metadata, 'model': 'resnet20'}, params=other, model='resnet20', source=path)
  assert '\n' not in str(raised.value) and path in str(raised.value)


# The command line on a tiny real digits run.

def run_signs(*args, timeout=SUBPROCESS_TIMEOUT):
  return subprocess.run([sys.executable, '-m', 'aws_jax.signs', *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def assert_refused(result, fragment):
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert len(errors) == 1 and fragment in errors[0], result.stderr


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """The digits protocol's pruning stage, shrunk: a one-epoch warm-up and two one-epoch rounds."""
  workdir = str(tmp_path_factory.mktemp('signs_run'))
  config = tiny_digits_config(stage='prune', **{'prune.warmup_epochs': 1, 'prune.rounds': 2,
                                                'prune.round_epochs': 1, 'barrier.psi_reset': False})
  protocol.run(config, workdir)
  return workdir, config


def test_cli_export_then_inspect(digits_run, tmp_path):
  workdir, config = digits_run
  out = tmp_path / 'digits.signs'
  result = run_signs('export', f'--config={REPO}/configs/digits.py', f'--workdir={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert f'{out}: small_cnn, round 2, 64.00% of the prunable weights left' in result.stdout
  signed, metadata = signs.load(str(out))
  setup = engine.make_setup(config)
  checkpoints = Checkpoints(RunDir(workdir).checkpoints('prune'))
  state = checkpoints.restore(2, setup.abstract_state(setup.optimizer('constant', 1)))
  summary = checkpoints.summary(2)
  checkpoints.close()
  expected = jax.tree.map(lambda s, norm: np.ones_like(s) if norm else s,
                          pruning.signs(state.params, state.mask), setup.is_norm)
  assert_trees_equal(signed, expected)
  assert_trees_equal(signs.mask_from_signs(signed), state.mask)
  signs.check_fits(signed, metadata, params=state.params, model='small_cnn', source=str(out))
  assert {k: metadata[k] for k in ('round', 'method', 'fraction_left')} == {
      k: summary[k] for k in ('round', 'method', 'fraction_left')}
  assert metadata['dataset'] == 'digits' and metadata['image_shape'] == [8, 8, 1] and metadata['num_classes'] == 10

  result = run_signs('inspect', out)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert 'model           small_cnn' in lines and 'round           2' in lines
  alive, total = summary['fraction_left'] * 64800, 64800
  assert any(line.startswith('all prunable') and f'{round(alive)}/{total}' in line and '64.00%' in line
             for line in lines), result.stdout
  conv_3 = next(line for line in lines if line.startswith('Conv_3/kernel'))
  kernel = np.asarray(signed['Conv_3']['kernel'])
  assert f'{np.count_nonzero(kernel)}/{kernel.size}' in conv_3
  assert f'{100 * np.count_nonzero(kernel > 0) / np.count_nonzero(kernel):.2f}%' in conv_3

  earlier = tmp_path / 'round1.signs'
  assert run_signs('export', f'--config={REPO}/configs/digits.py', f'--workdir={workdir}', '--round=1',
                   f'--out={earlier}').returncode == 0
  assert signs.load(str(earlier))[1]['fraction_left'] == pytest.approx(0.8)


def test_cli_refuses_bad_input_on_one_line_within_seconds(digits_run, tmp_path):
  workdir, _ = digits_run
  config = f'--config={REPO}/configs/digits.py'
  corrupt = tmp_path / 'corrupt.signs'
  corrupt.write_bytes(b'AWSSIGNS' + bytes(40))
  cases = [
      (('export', config, f'--workdir={tmp_path}/none', f'--out={tmp_path}/x.signs'), 'no complete pruning round'),
      (('export', config, f'--workdir={workdir}', '--round=7', f'--out={tmp_path}/x.signs'), 'saved: 0, 1, 2'),
      (('export', config, f'--workdir={workdir}'), 'export needs --out'),
      (('inspect', corrupt), 'corrupt or truncated'),
      (('inspect', tmp_path / 'missing.signs'), 'cannot read'),
      (('inspect',), 'inspect takes 1 argument, got 0'),
      (('inspect', corrupt, f'--workdir={workdir}'), '--workdir is no flag of inspect'),
      (('frobnicate',), 'give a command: export, inspect, to-torch, from-torch'),
  ]
  for args, fragment in cases:
    assert_refused(run_signs(*args), fragment)
  assert not os.path.exists(f'{tmp_path}/none')
  result = run_signs('--help')
  assert result.returncode == 0 and 'from-torch' in result.stdout + result.stderr


def test_final_trainings_from_the_file_equal_those_from_the_workdir(digits_run, tmp_path):
  workdir, config = digits_run
  out = tmp_path / 'digits.signs'
  result = run_signs('export', f'--config={REPO}/configs/digits.py', f'--workdir={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  final = {'stage': 'final', 'final.modes': ('signed', 'random_mask')}
  overrides = {key: config[key.split('.')[0]][key.split('.')[1]] for key in (
      'prune.warmup_epochs', 'prune.rounds', 'prune.round_epochs', 'barrier.psi_reset')}
  from_workdir = protocol.run(tiny_digits_config(**overrides, **final), workdir)
  from_file = protocol.run(tiny_digits_config(**overrides, **final, **{'final.signed_mask': str(out)}),
                           str(tmp_path / 'from_file'))
  assert without_times(from_file['final']) == without_times(from_workdir['final']) and len(from_file['final']) == 2
  assert from_file['rounds'] == []  # no pruning stage ran
  with pytest.raises(UserError, match='holds the signs of a small_cnn model, not resnet20'):
    protocol.run(tiny_digits_config(model='resnet20', **final, **{'final.signed_mask': str(out)}),
                 str(tmp_path / 'other_model'))


# The PyTorch bridge.

@pytest.fixture(scope='module')
def torch_models():
  pytest.importorskip('torch')
  import torch_models  # pylint: disable=import-outside-toplevel,redefined-outer-name  # tests/torch_models.py
  return torch_models


def random_torch_checkpoint(torch_models, model: str, seed: int):
  """A PyTorch network of `model` with random weights, half its conv weights masked, and BatchNorm statistics of
  one batch (so that activations stay near unit scale through 50 layers); returns (network, input batch)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  net = torch_models.create(model, 10)
  for module in net.modules():
    if isinstance(module, torch_models.MaskedConv2d):
      module.fixed_m.data = (torch.rand(module.weight.shape) < 0.5).float()
    if isinstance(module, torch.nn.BatchNorm2d):
      module.weight.data.uniform_(0.5, 1.5)
      module.bias.data.uniform_(-0.5, 0.5)
      module.momentum = None  # the running statistics become those of the next batch
  images = torch.rand(2, 3, 32, 32) if model == 'resnet50' else torch.rand(2, 3, 64, 64)
  with torch.no_grad():
    net.train()(images)
  return net.eval(), images


@pytest.mark.parametrize('model', signs.TORCH_MODELS)
def test_torch_names_map_to_the_same_network(torch_models, model):
  import torch  # pylint: disable=import-outside-toplevel
  net, images = random_torch_checkpoint(torch_models, model, seed=0)
  with torch.no_grad():
    expected = net(images).numpy()
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  params, batch_stats, mask = signs.from_torch_state_dict(state_dict, model, 'net')
  assert 0.4 < signs.fraction_left(mask, pruning.prunable_leaves(params)) < 0.6
  flax_model = models.create_model(model, 10)
  logits = jax.jit(lambda variables, x: flax_model.apply(variables, x, train=False))(
      {'params': pruning.apply_mask(params, mask), 'batch_stats': batch_stats}, images.numpy().transpose(0, 2, 3, 1))
  # Measured (logits of std 0.4-0.8): at most 1.0e-4 apart (resnet50_imagenet), 1.1e-4 (mobilenetv2_imagenet),
  # 2.1e-5 (resnet50); a wrong mapping is off by the logits' own scale.
  np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=3e-4)
  assert np.std(expected) > 0.1


def random_signed_mask(model: str, seed: int):
  """A random signed mask of `model` (10 classes): prunable leaves −1/0/+1, classifier and biases ±1, norms +1."""
  params = jax.eval_shape(lambda: train.init_variables(models.create_model(model, 10), jax.random.PRNGKey(0),
                                                       (32, 32, 3)))[0]
  prunable, is_norm = pruning.prunable_leaves(params), pruning.norm_leaves(params)
  rng = np.random.default_rng(seed)
  signed = jax.tree.map(lambda p, rule, norm: np.ones(p.shape, np.int8) if norm else rng.choice(
      np.array([-1, 0, 1] if rule else [-1, 1], np.int8), p.shape), params, prunable, is_norm)
  return signed, prunable, is_norm


def save_random_signed_mask(model: str, directory):
  """`random_signed_mask` saved with metadata of the model's dataset; returns (signed, path)."""
  signed, prunable, is_norm = random_signed_mask(model, seed=1)
  dataset = 'imagenet2012' if model.endswith('_imagenet') else 'cifar100'
  path = str(directory / 'first.signs')
  signs.save(path, signed, prunable=prunable, is_norm=is_norm, metadata={
      **METADATA, 'model': model, 'dataset': dataset, 'image_shape': list(datasets.FACTS[dataset].image_shape),
      'round': 3})
  return signed, path


@pytest.mark.parametrize('model', signs.TORCH_MODELS)
def test_signs_to_torch_and_back_are_exactly_equal(torch_models, model, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  signed, first = save_random_signed_mask(model, tmp_path)
  checkpoint, second = str(tmp_path / 'their.pt'), str(tmp_path / 'second.signs')
  signs.to_torch(first, checkpoint)
  signs.from_torch(checkpoint, second, {})
  again, again_metadata = signs.load(second)
  assert_trees_equal(again, signed)
  assert again_metadata == signs.load(first)[1]
  assert open(first, 'rb').read() == open(second, 'rb').read()

  # The authors' train.py loads it strictly, and their sign transfer reads sign(weight · fixed_m) and fixed_m.
  net = torch_models.create(model, 10)
  net.load_state_dict(torch.load(checkpoint, weights_only=True)['state_dict'])
  kernel_signs = {name: module for name, module in net.named_modules()
                  if isinstance(module, torch_models.MaskedConv2d)}
  for torch_name, flax_path in signs.torch_modules(model):
    if torch_name in kernel_signs:
      module = kernel_signs.pop(torch_name)
      s = np.asarray(signs.leaf_at(signed, flax_path)['kernel']).transpose(3, 2, 0, 1)
      np.testing.assert_array_equal(torch.sign(module.weight * module.fixed_m).detach().numpy(), s)
      np.testing.assert_array_equal(module.fixed_m.numpy(), s != 0)
  assert not kernel_signs  # every conv of the network is mapped


def test_from_torch_refuses_a_checkpoint_of_another_model(torch_models, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  mobilenet = str(tmp_path / 'mobilenet.pt')
  torch.save({'state_dict': torch_models.create('mobilenetv2_imagenet', 10).state_dict(), 'epoch': 3}, mobilenet)
  cifar_resnet = str(tmp_path / 'resnet.pt')
  torch.save(torch_models.create('resnet50', 10).state_dict(), cifar_resnet)
  out = str(tmp_path / 'out.signs')
  with pytest.raises(UserError, match='has no conv1.weight'):
    signs.from_torch(mobilenet, out, {'model': 'resnet50_imagenet'})
  with pytest.raises(UserError, match=r'Conv_0/kernel has shape \(3, 3, 3, 64\), the model \(7, 7, 3, 64\)'):
    signs.from_torch(cifar_resnet, out, {'model': 'resnet50_imagenet'})
  with pytest.raises(UserError, match='give the dataset'):
    signs.from_torch(cifar_resnet, out, {'model': 'resnet50'})
  with pytest.raises(UserError, match='no PyTorch names for mobilenetv2'):
    signs.from_torch(mobilenet, out, {'model': 'mobilenetv2'})
  signs.from_torch(cifar_resnet, out, {'model': 'resnet50', 'dataset': 'cifar100'})
  _, metadata = signs.load(out)
  assert metadata['method'] is None and metadata['round'] is None and metadata['fraction_left'] == 1
  assert_refused(run_signs('from-torch', mobilenet, f'--out={out}'), '--model=resnet50|resnet50_imagenet')
  assert not os.path.exists(out + '.tmp')


def test_cli_to_torch_and_from_torch(torch_models, tmp_path):
  del torch_models  # only skips without torch
  _, first = save_random_signed_mask('mobilenetv2_imagenet', tmp_path)
  checkpoint, second = str(tmp_path / 'their.pt'), str(tmp_path / 'second.signs')
  result = run_signs('to-torch', first, f'--out={checkpoint}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'{checkpoint}: mobilenetv2_imagenet, round 3,')
  result = run_signs('from-torch', checkpoint, f'--out={second}', '--method=lrr')
  assert result.returncode == 0, result.stderr
  assert signs.load(second)[1]['method'] == 'lrr'
  assert_trees_equal(signs.load(second)[0], signs.load(first)[0])
