"""Linear mode connectivity: error along the straight path between two networks, and its barrier (`measure`).

`aws_jax.barrier.NAME` is `aws_jax.barrier.measure.NAME` (`barrier.error_curve`, `barrier.compare`, ...), loaded on
first use: importing this package, as `python -m aws_jax.barrier` does, costs no JAX, so a bad command is answered
within a second. `python -m aws_jax.barrier` is the command line over `compare` (see its --help).
"""
import importlib


def __getattr__(name: str):
  if name.startswith('__'):
    raise AttributeError(name)
  return getattr(importlib.import_module('aws_jax.barrier.measure'), name)
