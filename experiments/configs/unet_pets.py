"""U-Net (Ronneberger et al. 2015, 'same' padding, batch norm) on the Oxford-IIIT Pet trimaps from tfds.

    python -m experiments.run --exp=unet_pets

The segmentation tutorial setting of TensorFlow and Keras: 128x128 images, pet / background classes with the
trimap's border pixels ignored (jaxcnn/data/pets.py), Adam 1e-3, 20 epochs of the 3,680 training images,
random scale / crop / flip. tfds downloads and prepares the dataset by itself on first use (no TensorFlow
needed). Target: about 0.85-0.90 foreground IoU, the figure such tutorials report for this size (there is no
paper figure). Not measured here (no download offline).
"""
from experiments.configs.common import segmentation_config


def get_config():
  c = segmentation_config()
  c.model.name = "unet"
  c.model.batch_norm = True
  c.data.name = "oxford_iiit_pet"
  c.data.download = True
  c.data.image_size = 128
  c.data.augment = "scale,crop,flip"
  c.data.scale_range = (0.75, 1.25)
  c.train.batch_size = 32
  c.train.steps = 20 * 3680 // 32
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.eval.every = 500
  c.eval.batch_size = 32
  c.checkpoint.every = 500
  return c
