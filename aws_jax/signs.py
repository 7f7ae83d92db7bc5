"""The winning sign as a file: a run's signed mask s ∈ {−1, 0, +1}, bit-packed, with what it belongs to.

Commands (`python -m aws_jax.signs COMMAND ...`):
  export --config=CONFIG --workdir=RUN [--round=K] --out=FILE   pruning round K (default: the last saved) of RUN
  inspect FILE                                                  metadata, and per layer: alive/total, % left, % +1
  to-torch FILE --out=CKPT.pt                                   a state_dict the authors' PyTorch code loads
  from-torch CKPT --out=FILE [--model=M --dataset=D --method=aws --round=K]   their checkpoint's signed mask

File format (little-endian; `encode` / `decode`):
  bytes 0-7    MAGIC, b'AWSSIGNS'
  bytes 8-39   sha256 of every byte from 40 to the end (checked on load: a corrupt or truncated file is refused)
  bytes 40-43  uint32 N, the header's length
  N bytes      header, UTF-8 JSON: {"format": 1, "metadata": {...}, "leaves": [[path, shape, kind], ...]}
  the rest     mask bits, then sign bits, each np.packbits (most significant bit first, zero-padded to a byte)
Leaves are in jax's order (paths sorted part by part), each a flattened C-order array in aws_jax's (flax) layout,
conv kernels HWIO and dense kernels (in, out). kind 'prunable': a mask bit per weight (1 alive) and a sign bit per
alive weight; 'signed' (classifier kernel, biases: never pruned): a sign bit per weight; 'norm' (normalization
scale and shift, ψ): nothing, since signed-mask transfer leaves them fresh. A sign bit is 1 for −1, 0 for +1.
At most 2 bits a prunable weight; 16.8 % left on digits' small_cnn takes 1/25.6 of its float32 params' bytes.

`load` gives the int8 tree `pruning.signs` gives, except norm leaves, filled with +1 (not stored). The metadata:
model, num_classes, image_shape, dataset, method, round (None where unknown), and, added by `save`, fraction_left
(alive / all prunable weights) and aws_jax_version.

PyTorch bridge (the `[torch]` extra) for torchvision's ResNet-50 and MobileNetV2 module names, the names of the
authors' code (github.com/JungHunOh/AWS_ICLR2025), where every Conv2d carries a `fixed_m` mask beside its weight
and train.py loads `torch.load(file)['state_dict']` strictly. `to-torch` writes {'state_dict', 'aws_jax_signs':
metadata}: each conv's weight is its signs as float (±1, 0 where pruned) and fixed_m = (sign ≠ 0); the classifier's
weight and bias are their signs; BatchNorms are fresh (weight 1, bias 0, running mean 0, variance 1). Their
`--sign_transfer --pretrained_dir=CKPT.pt` then puts these signs and masks on its initialisation. `from-torch` reads
such a checkpoint (or one of their pruning rounds): alive where fixed_m ≠ 0, −1 where the weight is negative.
"""
import hashlib
import importlib.metadata
import json
import os
import struct
from typing import Any, Mapping, NamedTuple

import numpy as np

from aws_jax.errors import UserError

PyTree = Any

MAGIC = b'AWSSIGNS'
FORMAT = 1
PRUNABLE, SIGNED, NORM = 'prunable', 'signed', 'norm'
METADATA_KEYS = ('model', 'num_classes', 'image_shape', 'dataset', 'method', 'round')
# (H, W, C) of each dataset in aws_jax.data.DATASETS: what the model is built for, known without loading it.
IMAGE_SHAPES = {'digits': (8, 8, 1), 'fashion_mnist': (28, 28, 1), 'cifar10': (32, 32, 3), 'cifar100': (32, 32, 3),
                'tiny_imagenet': (64, 64, 3), 'imagenet2012': (224, 224, 3)}
TORCH_MODELS = ('resnet50', 'resnet50_imagenet', 'mobilenetv2_imagenet')  # torchvision's module names
TORCH_METADATA_KEY = 'aws_jax_signs'
_DIGEST_BYTES = 32
_PREFIX = len(MAGIC) + _DIGEST_BYTES


class Leaf(NamedTuple):
  """One leaf of a signs file: its '/'-joined path, its shape and what is stored of it."""
  path: str
  shape: tuple[int, ...]
  kind: str  # PRUNABLE, SIGNED or NORM


def _flatten(tree: Mapping) -> dict[str, Any]:
  """{'a/b/kernel': leaf} of nested mappings, in jax's order (keys sorted at every level)."""
  flat = {}
  for key in sorted(tree):
    if isinstance(tree[key], Mapping):
      flat.update({f'{key}/{path}': leaf for path, leaf in _flatten(tree[key]).items()})
    else:
      flat[str(key)] = tree[key]
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict:
  tree = {}
  for path, leaf in flat.items():
    *parents, name = path.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf
  return tree


def leaf_at(tree: Mapping, path: str):
  """The leaf (or subtree) of nested mappings at a '/'-joined `path`."""
  for part in path.split('/'):
    tree = tree[part]
  return tree


def pack(signed: PyTree, prunable: PyTree, is_norm: PyTree) -> tuple[list[Leaf], bytes, bytes]:
  """The leaves' descriptions, the mask bits and the sign bits of a signed mask (see the module docstring)."""
  flat_prunable, flat_norm = _flatten(prunable), _flatten(is_norm)
  leaves, alive_bits, negative_bits = [], [], []
  for path, array in _flatten(signed).items():
    values = np.asarray(array).ravel()
    if not np.all(np.isin(values, (-1, 0, 1))):
      raise ValueError(f'{path}: a signed mask holds only -1, 0 and +1')
    kind = PRUNABLE if flat_prunable[path] else NORM if flat_norm[path] else SIGNED
    if kind == PRUNABLE:
      alive_bits.append(values != 0)
      negative_bits.append(values[values != 0] < 0)
    elif kind == SIGNED:
      if np.any(values == 0):
        raise ValueError(f'{path} is not prunable, yet has pruned (0) entries')
      negative_bits.append(values < 0)
    leaves.append(Leaf(path, tuple(np.shape(array)), kind))
  return leaves, _packbits(alive_bits), _packbits(negative_bits)


def _packbits(chunks: list[np.ndarray]) -> bytes:
  return np.packbits(np.concatenate(chunks) if chunks else np.zeros(0, bool)).tobytes()


def _bytes_for(bits: int) -> int:
  return -(-bits // 8)


def unpack(leaves: list[Leaf], mask_bytes: bytes, sign_bytes: bytes) -> dict:
  """The int8 signed mask `pack` packed; norm leaves are +1."""
  alive = _unpackbits(mask_bytes, _count(leaves, PRUNABLE))
  negative = _unpackbits(sign_bytes, int(alive.sum()) + _count(leaves, SIGNED))
  flat, mask_at, sign_at = {}, 0, 0
  for leaf in leaves:
    size = int(np.prod(leaf.shape))
    values = np.ones(size, np.int8)
    if leaf.kind == PRUNABLE:
      leaf_alive = alive[mask_at:mask_at + size]
      mask_at += size
      values[~leaf_alive] = 0
      count = int(leaf_alive.sum())
      values[leaf_alive] = np.where(negative[sign_at:sign_at + count], -1, 1)
      sign_at += count
    elif leaf.kind == SIGNED:
      values = np.where(negative[sign_at:sign_at + size], -1, 1).astype(np.int8)
      sign_at += size
    flat[leaf.path] = values.reshape(leaf.shape)
  return _unflatten(flat)


def _unpackbits(data: bytes, count: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool)


def _count(leaves: list[Leaf], kind: str) -> int:
  """Entries of all leaves of `kind`."""
  return sum(int(np.prod(leaf.shape)) for leaf in leaves if leaf.kind == kind)


def fraction_left(signed: PyTree, prunable: PyTree) -> float:
  """Alive prunable weights over all prunable weights."""
  flat_prunable = _flatten(prunable)
  kept = [np.asarray(s) for path, s in _flatten(signed).items() if flat_prunable[path]]
  return sum(int(np.count_nonzero(s)) for s in kept) / max(sum(s.size for s in kept), 1)


def encode(signed: PyTree, *, prunable: PyTree, is_norm: PyTree, metadata: dict) -> bytes:
  """A signs file's bytes; `metadata` needs METADATA_KEYS (JSON values); fraction_left and aws_jax_version added."""
  missing = [key for key in METADATA_KEYS if key not in metadata]
  if missing:
    raise ValueError(f'signs metadata lacks {", ".join(missing)}')
  leaves, mask_bytes, sign_bytes = pack(signed, prunable, is_norm)
  header = {'format': FORMAT,
            'metadata': {**metadata, 'fraction_left': fraction_left(signed, prunable),
                         'aws_jax_version': importlib.metadata.version('aws_jax')},
            'leaves': [list(leaf) for leaf in leaves]}
  header_bytes = json.dumps(header, separators=(',', ':'), sort_keys=True).encode()
  body = struct.pack('<I', len(header_bytes)) + header_bytes + mask_bytes + sign_bytes
  return MAGIC + hashlib.sha256(body).digest() + body


def decode(data: bytes, source: str = 'the signs file') -> tuple[list[Leaf], dict, dict]:
  """(leaves, signed, metadata) of a signs file's bytes; UserError, naming `source`, if they are not one."""
  if data[:len(MAGIC)] != MAGIC:
    raise UserError(f'{source} is not an aws_jax signs file; write one with python -m aws_jax.signs export')
  body = data[_PREFIX:]
  if len(data) < _PREFIX + 4 or hashlib.sha256(body).digest() != data[len(MAGIC):_PREFIX]:
    raise UserError(f'{source} is corrupt or truncated (its checksum does not match); export it again')
  header_length, = struct.unpack('<I', body[:4])
  header = json.loads(body[4:4 + header_length])
  if header['format'] != FORMAT:
    raise UserError(f'{source} has format {header["format"]}, this aws_jax reads format {FORMAT}; upgrade aws_jax')
  leaves = [Leaf(path, tuple(shape), kind) for path, shape, kind in header['leaves']]
  payload = body[4 + header_length:]
  mask_bits = _count(leaves, PRUNABLE)
  mask_length = _bytes_for(mask_bits)
  if len(payload) < mask_length or len(payload) != mask_length + _bytes_for(
      int(_unpackbits(payload[:mask_length], mask_bits).sum()) + _count(leaves, SIGNED)):
    raise UserError(f'{source} is corrupt: its bits do not match its header; export it again')
  return leaves, unpack(leaves, payload[:mask_length], payload[mask_length:]), header['metadata']


def save(path: str, signed: PyTree, *, prunable: PyTree, is_norm: PyTree, metadata: dict) -> None:
  """Writes the signs file (atomically); `prunable`, `is_norm` are `pruning`'s rule trees for `signed`."""
  data = encode(signed, prunable=prunable, is_norm=is_norm, metadata=metadata)
  try:
    with open(path + '.tmp', 'wb') as f:
      f.write(data)
    os.replace(path + '.tmp', path)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror}') from e


def _read(path: str) -> tuple[list[Leaf], dict, dict]:
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror}') from e
  return decode(data, path)


def load(path: str) -> tuple[dict, dict]:
  """(signed, metadata) of a signs file: int8 numpy arrays in nested dicts, like `pruning.signs`; norm leaves +1."""
  _, signed, metadata = _read(path)
  return signed, metadata


def mask_from_signs(signed: PyTree) -> dict:
  """The mask of the run the signs came from: s ≠ 0 (all True on leaves never pruned)."""
  return _unflatten({path: np.asarray(s) != 0 for path, s in _flatten(signed).items()})


def tree_mismatch(signed: PyTree, params: PyTree) -> str | None:
  """What differs between the leaf paths and shapes of a signed mask and a params tree (None: nothing)."""
  flat_signed, flat_params = _flatten(signed), _flatten(params)
  missing = [p for p in flat_params if p not in flat_signed]
  extra = [p for p in flat_signed if p not in flat_params]
  if missing or extra:
    first = f'{missing[0]} is missing' if missing else f'{extra[0]} is not in the model'
    return f'{len(missing)} leaves missing and {len(extra)} extra ({first})'
  for path, s in flat_signed.items():
    if tuple(np.shape(s)) != tuple(flat_params[path].shape):
      return f'{path} has shape {tuple(np.shape(s))}, the model {tuple(flat_params[path].shape)}'
  return None


def check_fits(signed: PyTree, metadata: dict, *, params: PyTree, model: str, source: str) -> None:
  """Raises UserError, on one line naming `source`, unless the signs are of `model` with `params`' paths and shapes."""
  if metadata['model'] != model:
    raise UserError(f'{source} holds the signs of a {metadata["model"]} model, not {model}; '
                    f'set --config.model={metadata["model"]} or export signs from a {model} run')
  mismatch = tree_mismatch(signed, params)
  if mismatch:
    raise UserError(f'{source} does not fit this {model} ({metadata["num_classes"]} classes in the file): '
                    f'{mismatch}; export signs from a run of this model and dataset')


def describe(leaves: list[Leaf], signed: dict, metadata: dict) -> str:
  """The metadata, then per sign-carrying leaf: alive/total, % left, % of +1 among the alive."""
  known = [*METADATA_KEYS, 'fraction_left', 'aws_jax_version']
  keys = [k for k in known if k in metadata] + sorted(k for k in metadata if k not in known)
  lines = [f'{key:16s}{metadata[key]}' for key in keys]
  lines += ['', f'{"leaf":44s}{"kind":9s}{"alive/total":>22s}{"left":>9s}{"+1 signs":>10s}']
  totals = np.zeros(3, np.int64)  # alive, total, +1 of the prunable leaves
  for leaf in leaves:
    if leaf.kind == NORM:
      continue
    values = leaf_at(signed, leaf.path)
    alive, total, positive = np.count_nonzero(values), values.size, np.count_nonzero(values > 0)
    if leaf.kind == PRUNABLE:
      totals += (alive, total, positive)
    lines.append(_row(leaf.path, leaf.kind, alive, total, positive))
  lines.append(_row('all prunable', '', *totals))
  norms = sum(leaf.kind == NORM for leaf in leaves)
  lines.append(f'{norms} normalization leaves are not stored (fresh at transfer; +1 on load)')
  return '\n'.join(lines)


def _row(name: str, kind: str, alive: int, total: int, positive: int) -> str:
  return (f'{name:44s}{kind:9s}{f"{alive}/{total}":>22s}{100 * alive / max(total, 1):8.2f}%'
          f'{100 * positive / max(alive, 1):9.2f}%')


def _abstract_params(model_name: str, num_classes: int, image_shape) -> PyTree:
  """The shapes of a model's params (as train.init_variables makes them, without importing the data pipeline)."""
  import jax  # pylint: disable=import-outside-toplevel
  from aws_jax import models  # pylint: disable=import-outside-toplevel
  model = models.create_model(model_name, num_classes)
  image = jax.ShapeDtypeStruct((1, *image_shape), 'float32')
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), image)['params']


def _save_signs_of(out: str, signed: dict, metadata: dict, exclude=None) -> dict:
  """Saves `signed` with `pruning`'s rules for it (`exclude`: from pruning, default the classifier); returns the
  metadata as written."""
  from aws_jax import pruning  # pylint: disable=import-outside-toplevel
  exclude = pruning.DEFAULT_EXCLUDE if exclude is None else exclude
  save(out, signed, prunable=pruning.prunable_leaves(signed, exclude), is_norm=pruning.norm_leaves(signed),
       metadata=metadata)
  return load(out)[1]


def export(config, workdir: str, round_index: int | None, out: str) -> dict:
  """Writes the signs of pruning round `round_index` (None: the last saved) of the run in `workdir`; its metadata."""
  from aws_jax.rundir import PRUNE, RunDir  # pylint: disable=import-outside-toplevel
  directory = RunDir(workdir).checkpoints(PRUNE)
  if not os.path.isdir(directory):
    raise UserError(f'{workdir} holds no pruning checkpoints ({directory} does not exist); check --workdir, '
                    f'or run the pruning stage first')
  from aws_jax.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  checkpoints = Checkpoints(directory)
  try:
    saved = checkpoints.steps()
    if not saved:
      raise UserError(f'{directory} holds no complete pruning round; run the pruning stage first')
    round_index = saved[-1] if round_index is None else round_index
    if round_index not in saved:
      raise UserError(f'pruning round {round_index} is not saved in {directory} (saved: '
                      f'{", ".join(map(str, saved))}); choose --round among them')
    summary = checkpoints.summary(round_index)
  finally:
    checkpoints.close()
  signed = _restore_signs(os.path.join(directory, str(round_index), 'state'))
  num_classes = signed['classifier']['kernel'].shape[-1]
  mismatch = tree_mismatch(signed, _abstract_params(config.model, num_classes, IMAGE_SHAPES[config.dataset]))
  if mismatch:
    raise UserError(f'{directory}/{round_index} is not a --config.model={config.model} checkpoint ({mismatch}); '
                    f'export with the config that wrote it')
  metadata = {'model': config.model, 'num_classes': num_classes, 'image_shape': list(IMAGE_SHAPES[config.dataset]),
              'dataset': config.dataset, 'method': summary['method'], 'round': summary['round']}
  return _save_signs_of(out, signed, metadata, config.prune.exclude)


def _restore_signs(state_directory: str) -> dict:
  """The 'signs' item of a `Checkpoints` state, alone, as numpy arrays (the rest is never read)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(state_directory).item_metadata.tree['signs']
  item = {'signs': jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = checkpointer.restore(state_directory, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  return _unflatten({path: np.asarray(s, np.int8) for path, s in _flatten(restored['signs']).items()})


# PyTorch bridge: torchvision's module names beside aws_jax's module paths.

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
  unused = sorted(set(_flatten(signed)) - used)
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
  return _unflatten(params), _unflatten(batch_stats), _unflatten(mask)


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
  if metadata['dataset'] not in IMAGE_SHAPES:
    raise UserError(f'give the dataset {checkpoint} was trained on: --dataset={"|".join(IMAGE_SHAPES)}')
  signed = _unflatten({path: np.where(m, np.where(p < 0, -1, 1), 0).astype(np.int8)
                       for (path, p), m in zip(_flatten(params).items(), _flatten(mask).values())})
  num_classes = signed['classifier']['kernel'].shape[-1]
  mismatch = tree_mismatch(signed, _abstract_params(model, num_classes, IMAGE_SHAPES[metadata['dataset']]))
  if mismatch:
    raise UserError(f'{checkpoint} is not a {model} ({mismatch}); check --model')
  metadata.update(num_classes=num_classes, image_shape=list(IMAGE_SHAPES[metadata['dataset']]))
  return _save_signs_of(out, signed, metadata)


def _summary_line(out: str, metadata: dict) -> str:
  return (f'{out}: {metadata["model"]}, round {metadata["round"]}, {100 * metadata["fraction_left"]:.2f}% of the '
          f'prunable weights left, {os.path.getsize(out):,} bytes')


def _cli() -> None:
  """`python -m aws_jax.signs`: flags are defined here, so that importing this module defines none."""
  # pylint: disable=import-outside-toplevel
  from absl import app, flags
  from ml_collections import config_flags

  from aws_jax import cli

  config_flag = config_flags.DEFINE_config_file('config', None, 'export: the run\'s config file (configs/*.py).',
                                                lock_config=True)
  flags.DEFINE_string('workdir', None, 'export: the run directory.')
  flags.DEFINE_integer('round', None, 'export: the pruning round (default: the last saved); from-torch: recorded.')
  flags.DEFINE_string('out', None, 'export, from-torch: the signs file to write; to-torch: the .pt file to write.')
  flags.DEFINE_string('model', None, f'from-torch: {" | ".join(TORCH_MODELS)} (default: what the file records).')
  flags.DEFINE_string('dataset', None, 'from-torch: the dataset the checkpoint was trained on.')
  flags.DEFINE_string('method', None, 'from-torch: aws or lrr, recorded in the file (default: unknown).')
  commands = {'export': (0, ('config', 'workdir', 'round', 'out'), ('config', 'workdir', 'out')),
              'inspect': (1, (), ()),
              'to-torch': (1, ('out',), ('out',)),
              'from-torch': (1, ('out', 'model', 'dataset', 'method', 'round'), ('out',))}
  own_flags = ('config', 'workdir', 'round', 'out', 'model', 'dataset', 'method')

  def main(argv):
    if len(argv) < 2 or argv[1] not in commands:
      cli.exit_with(f'give a command: {", ".join(commands)} (see --help)')
    command, arguments = argv[1], argv[2:]
    count, allowed, required = commands[command]
    if len(arguments) != count:
      cli.exit_with(f'{command} takes {count or "no"} argument{"s" * (count != 1)}, got {len(arguments)}: '
                    f'{" ".join(arguments)} (see --help)')
    given = {name: flags.FLAGS[name].value for name in own_flags if flags.FLAGS[name].present}
    for name in given:
      if name not in allowed:
        cli.exit_with(f'--{name} is no flag of {command} (see --help)')
    for name in required:
      if name not in given:
        cli.exit_with(f'{command} needs --{name}')
    cli.quiet_logging()
    try:
      if command == 'inspect':
        leaves, signed, metadata = _read(arguments[0])
        print(f'{arguments[0]} ({os.path.getsize(arguments[0]):,} bytes)\n{describe(leaves, signed, metadata)}')
      elif command == 'export':
        metadata = export(cli.load_config(config_flag), given['workdir'], given.get('round'), given['out'])
      elif command == 'to-torch':
        metadata = to_torch(arguments[0], given['out'])
      else:
        metadata = from_torch(arguments[0], given['out'], {k: v for k, v in given.items() if k != 'out'})
    except UserError as e:
      cli.exit_with(e)
    if command != 'inspect':
      print(_summary_line(given['out'], metadata), flush=True)

  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  _cli()
