"""The winning sign as a file: a run's signed mask s ∈ {−1, 0, +1}, bit-packed, with what it belongs to.

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
_DIGEST_BYTES = 32
_PREFIX = len(MAGIC) + _DIGEST_BYTES


class Leaf(NamedTuple):
  """One leaf of a signs file: its '/'-joined path, its shape and what is stored of it."""
  path: str
  shape: tuple[int, ...]
  kind: str  # PRUNABLE, SIGNED or NORM


def flatten(tree: Mapping) -> dict[str, Any]:
  """{'a/b/kernel': leaf} of nested mappings, in jax's order (paths sorted part by part)."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel  # imports JAX: not before it is needed
  flat = traverse_util.flatten_dict(tree)
  return {'/'.join(map(str, path)): flat[path] for path in sorted(flat)}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """The nested dicts of `flatten`'s output."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def leaf_at(tree: Mapping, path: str):
  """The leaf (or subtree) of nested mappings at a '/'-joined `path`."""
  for part in path.split('/'):
    tree = tree[part]
  return tree


def pack(signed: PyTree, prunable: PyTree, is_norm: PyTree) -> tuple[list[Leaf], bytes, bytes]:
  """The leaves' descriptions, the mask bits and the sign bits of a signed mask (see the module docstring)."""
  flat_prunable, flat_norm = flatten(prunable), flatten(is_norm)
  leaves, alive_bits, negative_bits = [], [], []
  for path, array in flatten(signed).items():
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
  return unflatten(flat)


def _unpackbits(data: bytes, count: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool)


def _count(leaves: list[Leaf], kind: str) -> int:
  """Entries of all leaves of `kind`."""
  return sum(int(np.prod(leaf.shape)) for leaf in leaves if leaf.kind == kind)


def fraction_left(signed: PyTree, prunable: PyTree) -> float:
  """Alive prunable weights over all prunable weights."""
  flat_prunable = flatten(prunable)
  kept = [np.asarray(s) for path, s in flatten(signed).items() if flat_prunable[path]]
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


def read(path: str) -> tuple[list[Leaf], dict, dict]:
  """(leaves, signed, metadata) of the signs file at `path` (`decode`); UserError if it cannot be read."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror}') from e
  return decode(data, path)


def load(path: str) -> tuple[dict, dict]:
  """(signed, metadata) of a signs file: int8 numpy arrays in nested dicts, like `pruning.signs`; norm leaves +1."""
  _, signed, metadata = read(path)
  return signed, metadata


def mask_from_signs(signed: PyTree) -> dict:
  """The mask of the run the signs came from: s ≠ 0 (all True on leaves never pruned)."""
  return unflatten({path: np.asarray(s) != 0 for path, s in flatten(signed).items()})


def tree_mismatch(signed: PyTree, params: PyTree) -> str | None:
  """What differs between the leaf paths and shapes of a signed mask and a params tree (None: nothing)."""
  flat_signed, flat_params = flatten(signed), flatten(params)
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
