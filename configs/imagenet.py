"""The paper's ImageNet runs: ResNet-50, MobileNetV2 or MLP-Mixer, AWS then signed-mask transfer.

Command:
  python -m aws_jax.main --config=configs/imagenet.py:resnet50 --workdir=runs/in_resnet50
  (presets: resnet50, mobilenetv2, mixer; plain LRR: --config.method=lrr)

The ImageNet-stem networks at 224 px (train: random resized crop 224 and flip; test: resize 256, centre crop 224).
Protocol (docs/method.md, ImageNet rows): 20 dense warm-up epochs, 10 rounds of 20 % pruning + 5 epochs at the constant
lr (10.74 % of the prunable weights left), then 100-epoch final trainings (cosine down to lr·1e-3) for the three
starts and seeds 2 and 3: 670 epochs in all. Optimizers: ResNet-50 Adam lr 1e-3, L2 weight decay 1e-5, batch 256;
Mixer Adam lr 1e-3, weight decay 5e-5, batch 512; MobileNetV2 SGD momentum 0.9, lr 0.05, weight decay 5e-5,
batch 256. Expected runtime on one H100, an estimate (not measured), assuming the input pipeline keeps up:
ResNet-50 about a week (~15 min an epoch), Mixer about 4 days, MobileNetV2 about 3 days.
Needs imagenet2012 prepared for tfds (manual download; see README, "Datasets"); streamed by `data_workers` processes.
"""
from aws_jax.config import base_config, check_preset

# preset: (model, optimizer, lr, weight decay, batch size)
PRESETS = {
    'resnet50': ('resnet50_imagenet', 'adam', 1e-3, 1e-5, 256),
    'mobilenetv2': ('mobilenetv2_imagenet', 'sgd', 0.05, 5e-5, 256),
    'mixer': ('mlp_mixer', 'adam', 1e-3, 5e-5, 512),
}


def get_config(preset: str = 'resnet50'):
  check_preset(preset, PRESETS)
  model, optimizer, lr, weight_decay, batch_size = PRESETS[preset]
  config = base_config()
  config.dataset = 'imagenet2012'
  config.model = model
  config.method = 'aws'
  config.batch_size = batch_size
  config.optimizer.name = optimizer
  config.optimizer.lr = lr
  config.optimizer.momentum = 0.9    # SGD only
  config.optimizer.weight_decay = weight_decay
  config.prune.warmup_epochs = 20
  config.prune.rounds = 10
  config.prune.round_epochs = 5
  config.final.epochs = 100
  config.final.schedule = 'cosine'
  config.final.seeds = (2, 3)
  config.data_workers = 12          # JPEG decoding processes; ~600 images/s each on one CPU core
  config.barrier.psi_reset = False  # barriers re-estimate BatchNorm from in-memory data; ImageNet streams
  config.barrier.lmc = False
  config.barrier.sgd_noise = False
  config.checkpoint_every_epochs = 2  # an epoch is long here
  return config
