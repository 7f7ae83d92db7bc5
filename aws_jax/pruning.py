"""Pure functions on parameter pytrees: masks, global magnitude pruning, signed masks and norm interpolation.

Every tree here mirrors the model's params: a mask has one boolean array per parameter (all True for leaves that
are never pruned), a sign tree one int8 array per parameter. The per-leaf *rules* (`prunable_leaves`,
`norm_leaves`) are trees of Python bools: they are decided by names, once, and stay static under `jax.jit`.
"""
import fractions
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any

DEFAULT_EXCLUDE = ('classifier',)


def _path_rule(params: PyTree, rule) -> PyTree:
  """Applies `rule(path, siblings)` to every leaf; `path` is a '/'-joined name, `siblings` the names beside it."""
  flat = traverse_util.flatten_dict(params)
  siblings = {}
  for path in flat:
    siblings.setdefault(path[:-1], set()).add(path[-1])
  return traverse_util.unflatten_dict({p: rule('/'.join(map(str, p)), siblings[p[:-1]]) for p in flat})


def norm_leaves(params: PyTree) -> PyTree:
  """True for normalization-layer scale and shift (ψ): the leaves of any module that owns a 'scale'."""
  return _path_rule(params, lambda path, siblings: 'scale' in siblings and 'kernel' not in siblings)


def prunable_leaves(params: PyTree, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> PyTree:
  """True for every conv / dense kernel whose path matches none of the `exclude` regexes (the classifier)."""
  patterns = [re.compile(e) for e in exclude]
  return _path_rule(
      params,
      lambda path, _: path.endswith('kernel') and not any(p.search(path) for p in patterns))


def full_mask(params: PyTree) -> PyTree:
  """A mask that keeps every weight."""
  return jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """Zeroes the pruned weights."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def prune_global_magnitude(params: PyTree, mask: PyTree, prunable: PyTree, fraction: float) -> PyTree:
  """Removes round(fraction · alive) of the alive prunable weights, those of smallest |w| over all layers.

  One threshold for all prunable leaves together; ties are broken by position, so exactly that many go.
  Non-prunable leaves keep their mask. Jit-friendly with `prunable` static.
  """
  leaves, treedef = jax.tree.flatten(params)
  masks = treedef.flatten_up_to(mask)
  rules = treedef.flatten_up_to(prunable)
  chosen = [i for i, rule in enumerate(rules) if rule]
  if not chosen:
    return mask
  scores = jnp.concatenate(
      [jnp.where(masks[i], jnp.abs(leaves[i]), -jnp.inf).ravel().astype(jnp.float32) for i in chosen])
  alive = jnp.sum(jnp.isfinite(scores), dtype=jnp.int32)
  n_remove = _times_fraction(alive, fraction)
  dead = scores.size - alive
  rank = jnp.empty(scores.size, jnp.int32).at[jnp.argsort(scores, stable=True)].set(
      jnp.arange(scores.size, dtype=jnp.int32))
  keep = rank >= dead + n_remove
  new_masks = list(masks)
  offset = 0
  for i in chosen:
    size = leaves[i].size
    new_masks[i] = keep[offset:offset + size].reshape(leaves[i].shape)
    offset += size
  return treedef.unflatten(new_masks)


def _times_fraction(count: jax.Array, fraction: float) -> jax.Array:
  """round(fraction · count), half up, in exact int32 arithmetic (float32 is inexact beyond 2^24 weights)."""
  ratio = fractions.Fraction(fraction).limit_denominator(10_000)
  p, q = ratio.numerator, ratio.denominator
  whole, rest = count // q, count % q
  return p * whole + (2 * p * rest + q) // (2 * q)


def signs(params: PyTree, mask: PyTree) -> PyTree:
  """The signed mask s ∈ {−1, 0, +1} (int8): 0 where pruned, else the weight's sign (+1 for an alive zero)."""
  return jax.tree.map(
      lambda p, m: jnp.where(m, jnp.where(p < 0, -1, 1), 0).astype(jnp.int8), params, mask)


def signed_mask_transfer(fresh_params: PyTree, signed_mask: PyTree, is_norm: PyTree) -> PyTree:
  """Puts a signed mask on a fresh initialisation: |w_fresh| · s for every non-norm leaf; ψ stays fresh."""
  return jax.tree.map(
      lambda p, s, norm: p if norm else jnp.abs(p) * s.astype(p.dtype), fresh_params, signed_mask, is_norm)


def interpolate_norm(params: PyTree, init_params: PyTree, alpha, is_norm: PyTree) -> PyTree:
  """ψ′ = α·ψ_init + (1 − α)·ψ for normalization leaves; other leaves unchanged. Differentiable in params."""
  return jax.tree.map(
      lambda p, p0, norm: alpha * p0 + (1 - alpha) * p if norm else p, params, init_params, is_norm)


def reset_norm(params: PyTree, init_params: PyTree, is_norm: PyTree) -> PyTree:
  """The same network with ψ set back to its initial value."""
  return jax.tree.map(lambda p, p0, norm: p0 if norm else p, params, init_params, is_norm)


def sparsity_summary(mask: PyTree, prunable: PyTree) -> dict:
  """Alive and total prunable weights, overall and per leaf ('a/b/kernel': [alive, total])."""
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  flat_rule = traverse_util.flatten_dict(prunable, sep='/')
  layers = {k: [int(np.sum(m)), int(np.size(m))] for k, m in flat_mask.items() if flat_rule[k]}
  alive = sum(a for a, _ in layers.values())
  total = sum(t for _, t in layers.values())
  return {'alive': alive, 'total': total, 'fraction_left': alive / max(total, 1), 'layers': layers}
