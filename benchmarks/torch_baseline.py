"""PyTorch baseline of one training step, for `python -m aws_jax.bench --torch`.

It trains the way the authors' PyTorch code does, as the side a user would otherwise pick: the same networks and
batch as aws_jax's benchmark, pruned kernels applied in the forward pass as weight * mask, SGD with momentum 0.9 and
weight decay 5e-4 at lr 0.1, and with --aws (the default) every BatchNorm's scale and shift blended toward (1, 0)
by one alpha ~ U[0, 1) per step. Inputs are random; only the time per step matters.

Needs torch only: pip install -e ".[torch]" (the CPU build is enough). Prints one JSON line with the keys
framework, version, model, batch, image, classes, aws, threads, params, ms_per_step_median, ms_per_step_min,
ms_per_step_max (milliseconds per step over the timed steps), steps, machine.

Example:
  python benchmarks/torch_baseline.py --model resnet20 --batch 128 --steps 20
"""
import argparse
import json
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# VGG-BN feature stacks: an int is a 3×3 conv of that width (+ BatchNorm + ReLU), 'M' a 2×2 max-pool.
VGG_PLANS = {
    'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}
RESNETS = ('resnet20', 'resnet56', 'resnet50')
# MobileNetV2 (CIFAR, kuangliu's pytorch-cifar): (expansion, width, blocks, stride); stride 1 in the stem and stage 2.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


class MaskedConv(nn.Conv2d):
  """A convolution whose kernel is multiplied by a fixed 0/1 mask buffer in every forward pass."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.register_buffer('mask', torch.ones_like(self.weight))

  def forward(self, x):
    return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation, self.groups)


class InterpBN(nn.BatchNorm2d):
  """BatchNorm whose affine parameters are α·(1, 0) + (1 − α)·(γ, β); batch statistics as usual."""
  alpha = 0.0

  def forward(self, x):
    scale = self.alpha + (1 - self.alpha) * self.weight
    shift = (1 - self.alpha) * self.bias
    return F.batch_norm(x, self.running_mean, self.running_var, scale, shift, self.training, self.momentum,
                        self.eps)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> list:
  return [MaskedConv(cin, cout, kernel, stride, padding, bias=False), InterpBN(cout)]


class VGG(nn.Module):
  """VGG-BN, CIFAR style: the conv stack, global average pooling, one dense classifier."""

  def __init__(self, plan, num_classes: int):
    super().__init__()
    layers, channels = [], 3
    for width in plan:
      if width == 'M':
        layers.append(nn.MaxPool2d(2))
        continue
      layers += [*conv_bn(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
      channels = width
    self.features = nn.Sequential(*layers)
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def shortcut(cin: int, cout: int, stride: int) -> nn.Module:
  """Identity, or a 1×1 masked conv + BatchNorm where the shape changes."""
  if stride == 1 and cin == cout:
    return nn.Sequential()
  return nn.Sequential(*conv_bn(cin, cout, 1, stride))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    self.c1, self.b1 = conv_bn(cin, width, 3, stride, 1)
    self.c2, self.b2 = conv_bn(width, width, 3, 1, 1)
    self.short = shortcut(cin, width, stride)

  def forward(self, x):
    y = F.relu(self.b1(self.c1(x)))
    return F.relu(self.b2(self.c2(y)) + self.short(x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    self.c1, self.b1 = conv_bn(cin, width, 1)
    self.c2, self.b2 = conv_bn(width, width, 3, stride, 1)
    self.c3, self.b3 = conv_bn(width, width * self.expansion, 1)
    self.short = shortcut(cin, width * self.expansion, stride)

  def forward(self, x):
    y = F.relu(self.b1(self.c1(x)))
    y = F.relu(self.b2(self.c2(y)))
    return F.relu(self.b3(self.c3(y)) + self.short(x))


class ResNet(nn.Module):
  """CIFAR ResNets (3×3 stem at stride 1): resnet20 / resnet56, 3 stages of 3 / 9 basic blocks; resnet50,
  bottlenecks 3-4-6-3."""

  def __init__(self, depth: int, num_classes: int):
    super().__init__()
    if depth != 50:
      block, widths, counts = BasicBlock, (16, 32, 64), ((depth - 2) // 6,) * 3
    else:
      block, widths, counts = Bottleneck, (64, 128, 256, 512), (3, 4, 6, 3)
    channels = widths[0]
    self.stem = nn.Sequential(*conv_bn(3, channels, 3, 1, 1), nn.ReLU(inplace=True))
    blocks = []
    for stage, (width, count) in enumerate(zip(widths, counts)):
      for index in range(count):
        blocks.append(block(channels, width, 2 if stage > 0 and index == 0 else 1))
        channels = width * block.expansion
    self.layers = nn.Sequential(*blocks)
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class InvertedResidual(nn.Module):
  """1×1 expansion (even at expansion 1), 3×3 depthwise, linear 1×1 projection; a shortcut on stride-1 blocks (a
  1×1 conv + BatchNorm where the width changes)."""

  def __init__(self, cin: int, expansion: int, width: int, stride: int):
    super().__init__()
    channels = expansion * cin
    self.c1, self.b1 = conv_bn(cin, channels, 1)
    self.c2, self.b2 = MaskedConv(channels, channels, 3, stride, 1, groups=channels, bias=False), InterpBN(channels)
    self.c3, self.b3 = conv_bn(channels, width, 1)
    self.stride = stride
    self.short = shortcut(cin, width, 1) if stride == 1 else None

  def forward(self, x):
    y = F.relu(self.b1(self.c1(x)))
    y = F.relu(self.b2(self.c2(y)))
    y = self.b3(self.c3(y))
    return y if self.short is None else y + self.short(x)


class MobileNetV2(nn.Module):
  """MobileNetV2 for 32×32 inputs: a 3×3 stem of 32, MOBILENETV2_STAGES, a 1×1 conv to 1280, one dense layer."""

  def __init__(self, num_classes: int):
    super().__init__()
    layers, channels = [*conv_bn(3, 32, 3, 1, 1), nn.ReLU(inplace=True)], 32
    for expansion, width, count, stride in MOBILENETV2_STAGES:
      for index in range(count):
        layers.append(InvertedResidual(channels, expansion, width, stride if index == 0 else 1))
        channels = width
    self.features = nn.Sequential(*layers, *conv_bn(channels, 1280, 1), nn.ReLU(inplace=True))
    self.fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def build(name: str, num_classes: int) -> nn.Module:
  if name in VGG_PLANS:
    return VGG(VGG_PLANS[name], num_classes)
  if name == 'mobilenetv2':
    return MobileNetV2(num_classes)
  return ResNet(int(name.removeprefix('resnet')), num_classes)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet20', choices=sorted(VGG_PLANS) + list(RESNETS) + ['mobilenetv2'])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image', type=int, default=32, help='image side in pixels')
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps before them')
  parser.add_argument('--threads', type=int, default=0, help="0: leave torch's default")
  parser.add_argument('--aws', action=argparse.BooleanOptionalAction, default=True,
                      help='blend BatchNorm affine parameters toward (1, 0) by one random alpha per step')
  parser.add_argument('--sparsity', type=float, default=0.0, help='fraction of each kernel masked to zero')
  parser.add_argument('--device', default='cpu', help="'cuda' for the GPU (torch with CUDA)")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  random.seed(0)
  model = build(args.model, args.classes).to(args.device).train()
  convs = [m for m in model.modules() if isinstance(m, MaskedConv)]
  norms = [m for m in model.modules() if isinstance(m, InterpBN)]
  if args.sparsity:
    for conv in convs:
      conv.mask.copy_((torch.rand_like(conv.mask) >= args.sparsity).float())
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  images = torch.randn(args.batch, 3, args.image, args.image).to(args.device)
  labels = torch.randint(0, args.classes, (args.batch,)).to(args.device)
  synchronize = torch.cuda.synchronize if args.device.startswith('cuda') else lambda: None

  ms = []
  for step in range(args.warmup + args.steps):
    start = time.perf_counter()
    alpha = random.random() if args.aws else 0.0
    for norm in norms:
      norm.alpha = alpha
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize()
    if step >= args.warmup:
      ms.append((time.perf_counter() - start) * 1e3)

  print(json.dumps({
      'framework': 'torch', 'version': torch.__version__, 'model': args.model, 'batch': args.batch,
      'image': args.image, 'classes': args.classes, 'aws': args.aws, 'threads': torch.get_num_threads(),
      'params': sum(p.numel() for p in model.parameters()),
      'ms_per_step_median': round(statistics.median(ms), 2), 'ms_per_step_min': round(min(ms), 2),
      'ms_per_step_max': round(max(ms), 2), 'steps': args.steps, 'machine': platform.machine(),
  }))


if __name__ == '__main__':
  main()
