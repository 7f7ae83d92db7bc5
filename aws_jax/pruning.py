"""Pure functions on parameter pytrees: masks, global magnitude pruning, signed masks and norm interpolation.

Every tree here mirrors the model's params: a mask has one boolean array per parameter (all True for leaves that
are never pruned), a sign tree one int8 array per parameter. The per-leaf *rules* (`prunable_leaves`,
`norm_leaves`) are trees of Python bools: they are decided by names, once, and stay static under `jax.jit`.
The functions the protocol calls between jitted steps (masks, signs, magnitude pruning, the signed-mask transfer)
are jitted themselves: one program per tree, not one per leaf and operation.
"""
import fractions
import functools
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


@jax.jit
def full_mask(params: PyTree) -> PyTree:
  """A mask that keeps every weight."""
  return jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)


def _magnitude(key: jax.Array, params: PyTree, mask: PyTree, prunable: PyTree, fraction: float,
               scope: str) -> PyTree:
  del key
  return prune_by_score(_magnitudes(params), mask, prunable, fraction, scope)


def _random(key: jax.Array, params: PyTree, mask: PyTree, prunable: PyTree, fraction: float, scope: str) -> PyTree:
  del params
  return prune_random(key, mask, prunable, fraction, scope)


# Pruning criteria: `criterion(key, params, mask, prunable, fraction, scope) -> the new mask`, removing `fraction` of
# the alive prunable weights (over all layers, or of each, as `scope` says). A method names one (config.Recipe).
CRITERIA = {'magnitude': _magnitude, 'random': _random}


@jax.jit
def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
  """Zeroes the pruned weights."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def prune_global_magnitude(params: PyTree, mask: PyTree, prunable: PyTree, fraction: float) -> PyTree:
  """Removes round(fraction · alive) of the alive prunable weights, those of smallest |w| over all layers.

  One threshold for all prunable leaves together; ties are broken by position, so exactly that many go.
  Non-prunable leaves keep their mask. Jit-friendly with `prunable` static.
  """
  return prune_by_score(_magnitudes(params), mask, prunable, fraction, 'global')


def prune_layerwise_magnitude(params: PyTree, mask: PyTree, prunable: PyTree, fraction: float) -> PyTree:
  """Removes round(fraction · alive in the leaf) from every prunable leaf separately, smallest |w| first."""
  return prune_by_score(_magnitudes(params), mask, prunable, fraction, 'layerwise')


def prune_random(key: jax.Array, mask: PyTree, prunable: PyTree, fraction: float, scope: str = 'global') -> PyTree:
  """Removes as many alive prunable weights as magnitude pruning of that `scope` would, uniformly at random.

  The scores are one random permutation of all prunable positions, so any set of alive weights (all of them, or
  one leaf's) is ranked uniformly at random and exactly round(fraction · alive) go, globally or per leaf.
  """
  leaves, treedef = jax.tree.flatten(mask)
  rules = treedef.flatten_up_to(prunable)
  chosen = [i for i, rule in enumerate(rules) if rule]
  if not chosen:
    return mask
  ranks = jax.random.permutation(key, sum(leaves[i].size for i in chosen))
  scores = [None] * len(leaves)
  for i, piece in zip(chosen, _unconcat(ranks, [leaves[i].shape for i in chosen])):
    scores[i] = piece
  return treedef.unflatten(_prune_lowest(scores, leaves, tuple(rules), fraction, scope))


def prune_by_score(scores: PyTree, mask: PyTree, prunable: PyTree, fraction: float, scope: str = 'global') -> PyTree:
  """Removes the round(fraction · alive) alive prunable weights of lowest score; ties go by position.

  `scope='global'` counts and ranks all prunable leaves together, 'layerwise' every prunable leaf on its own. The
  scores of non-prunable leaves are never read; their masks are kept. Jit-friendly with `prunable`, `fraction`
  and `scope` static.
  """
  leaves, treedef = jax.tree.flatten(scores)
  return treedef.unflatten(
      _prune_lowest(leaves, treedef.flatten_up_to(mask), tuple(treedef.flatten_up_to(prunable)), fraction, scope))


@jax.jit
def _magnitudes(params: PyTree) -> PyTree:
  """|w| of every leaf: the scores of magnitude pruning."""
  return jax.tree.map(jnp.abs, params)


@functools.partial(jax.jit, static_argnames=('rules', 'fraction', 'scope'))
def _prune_lowest(scores: list, masks: list, rules: tuple, fraction: float, scope: str) -> list:
  """`prune_by_score` on flat lists of leaves, one program; the scores of non-prunable leaves are never read."""
  if scope not in ('global', 'layerwise'):
    raise ValueError(f"scope must be 'global' or 'layerwise', not {scope!r}")
  chosen = [i for i, rule in enumerate(rules) if rule]
  new_masks = list(masks)
  if not chosen:
    return new_masks
  n_alive = jnp.stack([jnp.sum(masks[i], dtype=jnp.int32) for i in chosen])
  sizes = [masks[i].size for i in chosen]
  if scope == 'global':
    n_alive, sizes = jnp.sum(n_alive, keepdims=True), [sum(sizes)]
  keep = _keep_all_but_lowest(
      jnp.concatenate([jnp.ravel(scores[i]) for i in chosen]), jnp.concatenate([jnp.ravel(masks[i]) for i in chosen]),
      sizes, n_alive, _times_fraction(n_alive, fraction))
  for i, piece in zip(chosen, _unconcat(keep, [masks[i].shape for i in chosen])):
    new_masks[i] = piece
  return new_masks


def _keep_all_but_lowest(score: jax.Array, alive: jax.Array, sizes: Sequence[int], n_alive: jax.Array,
                         n_remove: jax.Array) -> jax.Array:
  """`alive` less, in every group g, its `n_remove[g]` alive entries of lowest score; ties broken by position.

  1-D; the groups are consecutive runs of static `sizes`, with `n_alive[g]` alive entries. One sort for all groups.
  """
  position = jnp.arange(score.size, dtype=jnp.int32)
  # Group by group, dead entries first, then the alive ones by ascending score; the sort is stable, so ties keep
  # their order. Group g fills sorted places [start, start + size): its first dead + n_remove go.
  threshold = np.cumsum([0, *sizes[:-1]], dtype=np.int32) + (np.asarray(sizes, np.int32) - n_alive) + n_remove
  if len(sizes) == 1:
    _, _, order = jax.lax.sort((alive, score, position), num_keys=2, is_stable=True)
    threshold = threshold[0]
  else:
    group = jnp.repeat(jnp.arange(len(sizes), dtype=jnp.int32), np.asarray(sizes), total_repeat_length=score.size)
    _, _, _, order = jax.lax.sort((group, alive, score, position), num_keys=3, is_stable=True)
    threshold = threshold[group]
  rank = jnp.empty(score.size, jnp.int32).at[order].set(position)
  return rank >= threshold


def _unconcat(flat: jax.Array, shapes: Sequence[tuple]) -> list:
  """Cuts a 1-D array into consecutive pieces of the given shapes."""
  pieces, offset = [], 0
  for shape in shapes:
    size = int(np.prod(shape, dtype=np.int64))
    pieces.append(flat[offset:offset + size].reshape(shape))
    offset += size
  return pieces


def _times_fraction(count: jax.Array, fraction: float) -> jax.Array:
  """round(fraction · count), half up, in exact int32 arithmetic (float32 is inexact beyond 2^24 weights)."""
  ratio = fractions.Fraction(fraction).limit_denominator(10_000)
  p, q = ratio.numerator, ratio.denominator
  whole, rest = count // q, count % q
  return p * whole + (2 * p * rest + q) // (2 * q)


@jax.jit
def signs(params: PyTree, mask: PyTree) -> PyTree:
  """The signed mask s ∈ {−1, 0, +1} (int8): 0 where pruned, else the weight's sign (+1 for an alive zero)."""
  return jax.tree.map(
      lambda p, m: jnp.where(m, jnp.where(p < 0, -1, 1), 0).astype(jnp.int8), params, mask)


def random_signs(key: jax.Array, signed: PyTree, is_norm: PyTree) -> PyTree:
  """The same zeros, but every nonzero entry of every non-norm leaf an independent uniform ±1 (int8); ψ unchanged."""
  leaves, treedef = jax.tree.flatten(signed)
  chosen = [i for i, norm in enumerate(treedef.flatten_up_to(is_norm)) if not norm]
  if not chosen:
    return signed
  negative = jax.random.bernoulli(key, 0.5, (sum(leaves[i].size for i in chosen),))  # One draw: quick to compile.
  new = list(leaves)
  for i, piece in zip(chosen, _unconcat(negative, [leaves[i].shape for i in chosen])):
    new[i] = jnp.where(leaves[i] != 0, jnp.where(piece, -1, 1), 0).astype(jnp.int8)
  return treedef.unflatten(new)


def random_mask_like(key: jax.Array, mask: PyTree, prunable: PyTree) -> PyTree:
  """A uniformly random mask with as many alive weights in every prunable leaf as `mask`; other leaves all True."""
  leaves, treedef = jax.tree.flatten(mask)
  rules = treedef.flatten_up_to(prunable)
  chosen = [i for i, rule in enumerate(rules) if rule]
  new = [jnp.ones(m.shape, bool) for m in leaves]
  if not chosen:
    return treedef.unflatten(new)
  sizes = [leaves[i].size for i in chosen]
  # Ranks from one random permutation of all prunable positions: each leaf keeps its n_alive of highest rank.
  n_alive = jnp.stack([jnp.sum(leaves[i], dtype=jnp.int32) for i in chosen])
  n_total = jnp.asarray(sizes, jnp.int32)
  keep = _keep_all_but_lowest(
      jax.random.permutation(key, sum(sizes)), jnp.ones(sum(sizes), bool), sizes, n_total, n_total - n_alive)
  for i, piece in zip(chosen, _unconcat(keep, [leaves[i].shape for i in chosen])):
    new[i] = piece
  return treedef.unflatten(new)


def signed_mask_transfer(fresh_params: PyTree, signed_mask: PyTree, is_norm: PyTree) -> PyTree:
  """Puts a signed mask on a fresh initialisation: |w_fresh| · s for every non-norm leaf; ψ stays fresh."""
  leaves, treedef = jax.tree.flatten(fresh_params)
  return treedef.unflatten(
      _transfer(leaves, treedef.flatten_up_to(signed_mask), tuple(treedef.flatten_up_to(is_norm))))


@functools.partial(jax.jit, static_argnames='norms')
def _transfer(params: list, signed: list, norms: tuple) -> list:
  """`signed_mask_transfer` on flat lists of leaves, the norm rules static."""
  return [p if norm else jnp.abs(p) * s.astype(p.dtype) for p, s, norm in zip(params, signed, norms)]


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


def sign_flips(signed: PyTree, params: PyTree, leaves: PyTree) -> dict:
  """The fraction of a sign tree's nonzero entries whose sign `params` no longer has, overall and per leaf.

  Only leaves whose rule in `leaves` is True count (for inherited signs: the non-norm leaves,
  `jax.tree.map(operator.not_, is_norm)`). A weight's sign is −1 if negative, else +1, as in `signs`.
  Host-side: {'overall': float, 'layers': {'a/b/kernel': float}}; a leaf with no nonzero sign reads 0.
  """
  flat_signed = traverse_util.flatten_dict(signed, sep='/')
  flat_params = traverse_util.flatten_dict(params, sep='/')
  counts = {}
  for k, rule in traverse_util.flatten_dict(leaves, sep='/').items():
    if rule:
      s, p = np.asarray(flat_signed[k]), np.asarray(flat_params[k])
      counts[k] = (int(np.sum((s != 0) & ((s < 0) != (p < 0)))), int(np.sum(s != 0)))
  flipped = sum(f for f, _ in counts.values())
  total = sum(t for _, t in counts.values())
  return {'overall': flipped / max(total, 1), 'layers': {k: f / max(t, 1) for k, (f, t) in counts.items()}}


def sign_changes(params_a: PyTree, params_b: PyTree, mask: PyTree, prunable: PyTree) -> dict:
  """The fraction of the weights alive in `mask` of prunable leaves whose sign differs between a and b."""
  return sign_flips(signs(params_a, mask), params_b, prunable)


def sign_flip_fraction(signed: PyTree, params: PyTree, leaves: PyTree) -> jax.Array:
  """`sign_flips(...)['overall']` as a float32 scalar, jit-friendly with `leaves` static."""
  signed_leaves, treedef = jax.tree.flatten(signed)
  flipped, total = jnp.int32(0), jnp.int32(0)
  for s, p, rule in zip(signed_leaves, treedef.flatten_up_to(params), treedef.flatten_up_to(leaves)):
    if rule:
      flipped += jnp.sum((s != 0) & ((s < 0) != (p < 0)), dtype=jnp.int32)
      total += jnp.sum(s != 0, dtype=jnp.int32)
  return flipped / jnp.maximum(total, 1).astype(jnp.float32)


@jax.jit
def mask_from_signs(signed: PyTree) -> PyTree:
  """The mask a signed mask implies: s ≠ 0 (all True on leaves that were never pruned)."""
  return jax.tree.map(lambda s: s != 0, signed)


def psi_statistics(params: PyTree, is_norm: PyTree, low: float = 0.2) -> dict:
  """The normalization layers' ψ: per layer the mean scale γ and mean |shift β|; over layers the median of the mean
  γs, and the share of all γ entries below `low` (a γ decayed toward 0 silences its channel)."""
  flat, rules = traverse_util.flatten_dict(params), traverse_util.flatten_dict(is_norm)
  layers, gammas = {}, []
  for path, value in flat.items():
    if rules[path] and path[-1] in ('scale', 'bias'):
      value = np.asarray(value, np.float64)
      layer = layers.setdefault('/'.join(map(str, path[:-1])), {})
      if path[-1] == 'scale':
        layer['gamma_mean'] = float(value.mean())
        gammas.append(value.ravel())
      else:
        layer['beta_abs_mean'] = float(np.abs(value).mean())
  if not gammas:
    return {'layers': {}}
  every_gamma = np.concatenate(gammas)
  return {'layers': dict(sorted(layers.items())),
          'gamma_median': float(np.median([layer['gamma_mean'] for layer in layers.values() if 'gamma_mean' in layer])),
          'gamma_below': float(np.mean(every_gamma < low)), 'low': low}
