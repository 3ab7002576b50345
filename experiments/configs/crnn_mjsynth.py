"""CRNN (Shi, Bai & Yao 2015, arXiv:1507.05717) on MJSynth (Jaderberg et al.'s Synth90k), the paper's recipe.

    python -m experiments.run --exp=crnn_mjsynth --config.data.data_dir=/path/to/mnt/ramdisk/max/90kDICT32px

The paper's network (`crnn`: 7 convolutions, BN after conv5/conv6, two bidirectional LSTMs of 256, 37
classes = 0-9a-z + blank, 8.3M parameters) trained from scratch on the 7.2M MJSynth training images
(annotation_train.txt; labels from the file names, lowercased), images stretched to 100 x 32 grey (T = 26
columns), CTC loss, ADADELTA with rho 0.9 (lr 1.0, no schedule), as Section 3.2 states. The paper does not
give the batch size or the number of iterations ("about 50 hours to reach convergence" on a GPU); the batch
of 64 is crnn.pytorch's default and 300,000 steps (~2.7 epochs) our choice. Evaluation here is on MJSynth's
own test split (annotation_test.txt; sequence accuracy and CER, greedy decoding). The paper's target is on
the real benchmarks, lexicon-free: IIIT5K 78.2%, SVT 80.8%, IC03 89.4%, IC13 86.7% word accuracy (Table 2);
for IIIT5K register its lists (`data.name=iiit5k`, see jaxcnn/data/ocr.py) and evaluate a checkpoint on it.
Not run here (no MJSynth on this machine, 10 GB).
"""
from experiments.configs.common import base_config
from jaxcnn.tasks.sequence import sequence_defaults


def get_config():
  c = base_config()
  c.task = "sequence"
  c.sequence = sequence_defaults()
  c.model.name = "crnn"
  c.data.name = "mjsynth"
  c.data.image_size = (32, 100)
  c.data.channels = 1
  c.data.normalize = "standard"   # mjsynth's stats are mean = std = 0.5: pixels to [-1, 1], as crnn.pytorch
  c.data.augment = ""
  c.train.steps = 300_000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.optim.name = "adadelta"
  c.optim.lr = 1.0
  c.optim.rho = 0.9
  c.optim.eps = 1e-6
  c.optim.schedule = "constant"
  c.eval.every = 10_000
  c.eval.batch_size = 512
  c.checkpoint.every = 5_000
  return c
