"""What each dataset is, known without loading it: image shape, classes, augmentation, the split evaluated on.

Light on purpose (no JAX, no tfds): config validation, the signs file and its command line read these facts within a
second; aws_jax.data loads the images.
"""
from typing import NamedTuple

AUGMENTATIONS = ('none', 'crop_flip', 'resized_crop_flip')


class Facts(NamedTuple):
  image_shape: tuple[int, int, int]  # (H, W, C) the model is built for
  num_classes: int
  augmentation: str                  # one of AUGMENTATIONS: 'crop_flip' pads by 4 and crops, 'resized_crop_flip' is
                                     # a random resized crop; both flip horizontally ('none' for imagenet2012,
                                     # whose worker processes augment as they decode)
  test_split: str = 'test'           # the split test accuracy is measured on
  authors_constants: bool = False    # normalization='authors' uses the reference's constants (else: computed ones)


FACTS = {
    'digits': Facts((8, 8, 1), 10, 'none'),
    'fashion_mnist': Facts((28, 28, 1), 10, 'none'),
    'cifar10': Facts((32, 32, 3), 10, 'crop_flip'),
    'cifar100': Facts((32, 32, 3), 100, 'crop_flip', authors_constants=True),
    'tiny_imagenet': Facts((64, 64, 3), 200, 'resized_crop_flip', authors_constants=True),
    'imagenet2012': Facts((224, 224, 3), 1000, 'none', test_split='validation'),
}
DATASETS = tuple(FACTS)
