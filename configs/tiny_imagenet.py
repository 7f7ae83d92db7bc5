"""The paper's Tiny-ImageNet runs (200 classes, 64 px): ResNet-50, MobileNetV2, EfficientNet-B0 or ShuffleNet.

Command:
  python -m aws_jax.main --config=configs/tiny_imagenet.py:resnet50 --workdir=runs/tin_resnet50
  (presets: resnet50, mobilenetv2, efficientnet_b0, shufflenet; plain LRR: --config.method=lrr)

The CIFAR-style networks (3×3 stride-1 stem; they pool globally, so 64 px fit), with CIFAR-100's protocol
(docs/method.md): SGD momentum 0.9, lr 0.1 (MobileNetV2 0.05), weight decay 5e-4, batch 128; 10 warm-up epochs, 15
rounds of 20 % pruning + 10 epochs at the constant lr, 100-epoch final trainings (lr ÷10 at 50 % and 75 %) for the three
starts and seeds 2 and 3: 760 epochs of 100 000 images; augmentation: random resized crop 64 px of scale (0.5, 1)
and horizontal flip. Expected runtime on one H100, an estimate (not measured): 8× a CIFAR-100 run (4× the pixels,
2× the images), so ResNet-50 about a day, the three small networks about 8–16 hours each.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location('cifar100', os.path.join(os.path.dirname(__file__), 'cifar100.py'))
cifar100 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cifar100)
PRESETS = cifar100.PRESETS


def get_config(preset: str = 'resnet50'):
  config = cifar100.get_config(preset)  # the same protocol and models as CIFAR-100
  config.dataset = 'tiny_imagenet'
  return config
