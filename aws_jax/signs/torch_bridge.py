"""PyTorch bridge (the `[torch]` extra) for torchvision's ResNet-50 and MobileNetV2 module names, the names of the
authors' code (github.com/JungHunOh/AWS_ICLR2025), where every Conv2d carries a `fixed_m` mask beside its weight
and train.py loads `torch.load(file)['state_dict']` strictly. `to-torch` writes {'state_dict', 'aws_jax_signs':
metadata}: each conv's weight is its signs as float (±1, 0 where pruned) and fixed_m = (sign ≠ 0); the classifier's
weight and bias are their signs; BatchNorms are fresh (weight 1, bias 0, running mean 0, variance 1). Their
`--sign_transfer --pretrained_dir=CKPT.pt` then puts these signs and masks on its initialisation. `from-torch` reads
such a checkpoint (or one of their pruning rounds): alive where fixed_m ≠ 0, −1 where the weight is negative.
"""
from typing import Mapping

import numpy as np

from aws_jax.datasets import FACTS
from aws_jax.errors import UserError
from aws_jax.signs.export import abstract_params, save_with_pruning_rules
from aws_jax.signs.format import flatten, leaf_at, load, tree_mismatch, unflatten

TORCH_MODELS = ('resnet50', 'resnet50_imagenet', 'mobilenetv2_imagenet')  # torchvision's module names
TORCH_METADATA_KEY = 'aws_jax_signs'


def torch_modules(model: str) -> list[tuple[str, str]]:
  """(torchvision module name, aws_jax module path) of every conv, norm and dense layer of `model`, in order."""
  if model in ('resnet50', 'resnet50_imagenet'):
    return _resnet50_modules()
  if model == 'mobilenetv2_imagenet':
    return _mobilenetv2_modules()
  raise UserError(f'no PyTorch names for {model}; the bridge knows torchvision\'s {", ".join(TORCH_MODELS)}')


def _resnet50_modules() -> list[tuple[str, str]]:
  modules = [('conv1', 'Conv_0'), ('bn1', 'BatchNorm_0')]
  block = 0
  for stage, blocks in enumerate((3, 4, 6, 3)):
    for index in range(blocks):
      torch_block, flax_block = f'layer{stage + 1}.{index}', f'Bottleneck_{block}'
      for layer in range(3):
        modules += [(f'{torch_block}.conv{layer + 1}', f'{flax_block}/Conv_{layer}'),
                    (f'{torch_block}.bn{layer + 1}', f'{flax_block}/BatchNorm_{layer}')]
      if index == 0:
        modules += [(f'{torch_block}.downsample.0', f'{flax_block}/shortcut'),
                    (f'{torch_block}.downsample.1', f'{flax_block}/BatchNorm_3')]
      block += 1
  return modules + [('fc', 'classifier')]


def _mobilenetv2_modules() -> list[tuple[str, str]]:
  modules = [('features.0.0', 'Conv_0'), ('features.0.1', 'BatchNorm_0')]
  block = 0
  for expansion, blocks in ((1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1)):  # as models.MOBILENETV2_STAGES
    for _ in range(blocks):
      torch_layers = ('0.0', '0.1', '1', '2') if expansion == 1 else ('0.0', '0.1', '1.0', '1.1', '2', '3')
      flax_layers = [name for i in range(len(torch_layers) // 2) for name in (f'Conv_{i}', f'BatchNorm_{i}')]
      modules += [(f'features.{block + 1}.conv.{t}', f'InvertedResidual_{block}/{f}')
                  for t, f in zip(torch_layers, flax_layers)]
      block += 1
  return modules + [(f'features.{block + 1}.0', 'Conv_1'), (f'features.{block + 1}.1', 'BatchNorm_1'),
                    ('classifier.1', 'classifier')]


def _to_torch_layout(kernel: np.ndarray) -> np.ndarray:
  """HWIO conv kernels to OIHW, (in, out) dense kernels to (out, in)."""
  return kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T


def _to_flax_layout(weight: np.ndarray) -> np.ndarray:
  return weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T


def to_torch_state_dict(signed: dict, model: str, source: str) -> dict[str, np.ndarray]:
  """The state_dict (numpy) of the module docstring's PyTorch checkpoint of a signed mask of `model`."""
  state_dict, used = {}, set()
  for torch_name, flax_path in torch_modules(model):
    module = leaf_at(signed, flax_path)
    used.update(f'{flax_path}/{name}' for name in module)
    if 'scale' in module:
      channels = module['scale'].shape
      state_dict.update({f'{torch_name}.weight': np.ones(channels, np.float32),
                         f'{torch_name}.bias': np.zeros(channels, np.float32),
                         f'{torch_name}.running_mean': np.zeros(channels, np.float32),
                         f'{torch_name}.running_var': np.ones(channels, np.float32),
                         f'{torch_name}.num_batches_tracked': np.array(0, np.int64)})
      continue
    weight = np.ascontiguousarray(_to_torch_layout(module['kernel'])).astype(np.float32)
    state_dict[f'{torch_name}.weight'] = weight
    if weight.ndim == 4:
      state_dict[f'{torch_name}.fixed_m'] = (weight != 0).astype(np.float32)
    if 'bias' in module:
      state_dict[f'{torch_name}.bias'] = module['bias'].astype(np.float32)
  unused = sorted(set(flatten(signed)) - used)
  if unused:
    raise UserError(f'{source} has {len(unused)} leaves with no {model} module in torchvision (first: {unused[0]})')
  return state_dict


def from_torch_state_dict(state_dict: Mapping[str, np.ndarray], model: str,
                          source: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats, mask) in aws_jax's layout from a torchvision-named state_dict of `model` (numpy).

  The mask is fixed_m ≠ 0 where a conv has one, else all True.
  """
  params, batch_stats, mask, unused = {}, {}, {}, set(state_dict)

  def take(name: str) -> np.ndarray:
    if name not in state_dict:
      raise UserError(f'{source} has no {name}: not a {model} state_dict in torchvision\'s names; check --model')
    unused.discard(name)
    return np.asarray(state_dict[name])

  for torch_name, flax_path in torch_modules(model):
    if flax_path.rsplit('/', 1)[-1].startswith('BatchNorm'):
      params[f'{flax_path}/scale'] = take(f'{torch_name}.weight')
      params[f'{flax_path}/bias'] = take(f'{torch_name}.bias')
      batch_stats[f'{flax_path}/mean'] = take(f'{torch_name}.running_mean')
      batch_stats[f'{flax_path}/var'] = take(f'{torch_name}.running_var')
      unused.discard(f'{torch_name}.num_batches_tracked')
      continue
    weight = take(f'{torch_name}.weight')
    params[f'{flax_path}/kernel'] = _to_flax_layout(weight)
    if f'{torch_name}.fixed_m' in state_dict:
      mask[f'{flax_path}/kernel'] = _to_flax_layout(take(f'{torch_name}.fixed_m')) != 0
    if f'{torch_name}.bias' in state_dict:
      params[f'{flax_path}/bias'] = take(f'{torch_name}.bias')
  if unused:
    raise UserError(f'{source} has {len(unused)} entries that are no {model} module in torchvision\'s names '
                    f'(first: {sorted(unused)[0]}); check --model')
  mask = {path: mask.get(path, np.ones(p.shape, bool)) for path, p in params.items()}
  return unflatten(params), unflatten(batch_stats), unflatten(mask)


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError('the PyTorch bridge needs torch: pip install "aws_jax[torch]"') from e
  return torch


def to_torch(path: str, out: str) -> dict:
  """Writes the signs file at `path` as the authors' PyTorch checkpoint; returns its metadata."""
  torch = _import_torch()
  signed, metadata = load(path)
  state_dict = to_torch_state_dict(signed, metadata['model'], path)
  try:
    torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in state_dict.items()},
                TORCH_METADATA_KEY: metadata}, out)
  except OSError as e:
    raise UserError(f'cannot write {out}: {e.strerror}') from e
  return metadata


def from_torch(checkpoint: str, out: str, given: dict) -> dict:
  """Writes the signed mask of a PyTorch checkpoint as a signs file; returns its metadata.

  `given` (model, dataset, method, round) overrides what a `to-torch` file records; the dataset defaults to
  imagenet2012 for '_imagenet' models, method and round to None (unknown).
  """
  torch = _import_torch()
  try:
    stored = torch.load(checkpoint, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds on a file it can't read
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f'cannot read {checkpoint} as a PyTorch checkpoint ({reason})') from e
  state_dict = stored.get('state_dict', stored) if isinstance(stored, dict) else None
  if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
    raise UserError(f'{checkpoint} holds no state_dict (a dict of tensors, or one under \'state_dict\')')
  recorded = {k: v for k, v in stored.get(TORCH_METADATA_KEY, {}).items()
              if k in ('model', 'dataset', 'method', 'round')}
  metadata = {'method': None, 'round': None, **recorded, **given}
  if 'model' not in metadata:
    raise UserError(f'{checkpoint} does not say which model it is; give --model={"|".join(TORCH_MODELS)}')
  model = metadata['model']
  params, _, mask = from_torch_state_dict({k: v.numpy() for k, v in state_dict.items()}, model, checkpoint)
  metadata.setdefault('dataset', 'imagenet2012' if model.endswith('_imagenet') else None)
  if metadata['dataset'] not in FACTS:
    raise UserError(f'give the dataset {checkpoint} was trained on: --dataset={"|".join(FACTS)}')
  signed = unflatten({path: np.where(m, np.where(p < 0, -1, 1), 0).astype(np.int8)
                       for (path, p), m in zip(flatten(params).items(), flatten(mask).values())})
  num_classes = signed['classifier']['kernel'].shape[-1]
  mismatch = tree_mismatch(signed, abstract_params(model, num_classes, FACTS[metadata['dataset']].image_shape))
  if mismatch:
    raise UserError(f'{checkpoint} is not a {model} ({mismatch}); check --model')
  metadata.update(num_classes=num_classes, image_shape=list(FACTS[metadata['dataset']].image_shape))
  return save_with_pruning_rules(out, signed, metadata)
