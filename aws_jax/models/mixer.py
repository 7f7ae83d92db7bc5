"""MLP-Mixer: patches mixed by MLPs across tokens and across channels, no convolution past the embedding."""
import functools

import flax.linen as nn

from aws_jax.models.inits import FLAX, Inits
from aws_jax.models.layers import Conv, LayerNorm, classifier

class MlpBlock(nn.Module):
  """Dense to `hidden`, GELU, dense back to the input width."""
  hidden: int
  inits: Inits

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, kernel_init=self.inits.dense)
    y = nn.gelu(dense(self.hidden, bias_init=self.inits.bias(x.shape[-1]))(x), approximate=False)
    return dense(x.shape[-1], bias_init=self.inits.bias(self.hidden))(y)


class MixerBlock(nn.Module):
  """Pre-LayerNorm residual token mixing (an MLP across tokens), then channel mixing (an MLP across channels)."""
  token_expansion: float
  channel_expansion: float
  inits: Inits

  @nn.compact
  def __call__(self, x):
    _, tokens, width = x.shape
    y = LayerNorm()(x).swapaxes(1, 2)
    x = x + MlpBlock(int(tokens * self.token_expansion), self.inits, name='token_mixing')(y).swapaxes(1, 2)
    y = LayerNorm()(x)
    return x + MlpBlock(int(width * self.channel_expansion), self.inits, name='channel_mixing')(y)


class MlpMixer(nn.Module):
  """MLP-Mixer: a patch-embedding conv, `depth` mixer blocks, LayerNorm, mean over tokens, dense classifier."""
  num_classes: int
  patch: int = 16
  width: int = 512
  depth: int = 12
  token_expansion: float = 4
  channel_expansion: float = 0.5
  inits: Inits = FLAX

  @nn.compact
  def __call__(self, x, train: bool = False):
    # The reference's patch embedding is a Linear on flattened patches: PyTorch's default draws it as this conv.
    x = Conv(self.width, (self.patch, self.patch), strides=self.patch, padding='VALID', use_bias=True,
             kernel_init=self.inits.conv, bias_init=self.inits.bias(self.patch**2 * x.shape[-1]),
             name='patch_embedding')(x)
    x = x.reshape(x.shape[0], -1, self.width)
    for _ in range(self.depth):
      x = MixerBlock(self.token_expansion, self.channel_expansion, self.inits)(x)
    x = LayerNorm()(x)
    return classifier(self.inits, self.num_classes, x.mean(axis=1))
