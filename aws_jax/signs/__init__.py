"""The winning sign as a file, and its way to and from PyTorch.

  format.py        the signs file: a signed mask s ∈ {−1, 0, +1}, bit-packed, with what it belongs to
  export.py        a pruning round's signed mask from a run directory, as a signs file
  torch_bridge.py  signs files to and from the authors' PyTorch checkpoints (torchvision's module names)
  __main__.py      `python -m aws_jax.signs` (export, inspect, to-torch, from-torch)

Their public names are this package's too: `signs.load`, `signs.save`, `signs.export`, `signs.to_torch`, ...
"""
from aws_jax.signs.export import abstract_params, export, save_with_pruning_rules
from aws_jax.signs.format import (FORMAT, MAGIC, METADATA_KEYS, NORM, PRUNABLE, SIGNED, Leaf, check_fits, decode,
                                  describe, encode, flatten, fraction_left, leaf_at, load, mask_from_signs, pack,
                                  read, save, tree_mismatch, unflatten, unpack)
from aws_jax.signs.torch_bridge import (TORCH_METADATA_KEY, TORCH_MODELS, from_torch, from_torch_state_dict,
                                        to_torch, to_torch_state_dict, torch_modules)
