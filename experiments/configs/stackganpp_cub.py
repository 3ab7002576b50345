"""StackGAN++ (Zhang et al. 2018) on CUB-200-2011 birds at 64/128/256 from char-CNN-RNN text embeddings.

    python -m experiments.run --exp=stackganpp_cub --workdir=workdirs/stackganpp_cub \
        --config.data.data_dir=/path/to/birds

Data: as `stackgan_cub` (dataset `cub_stackgan`, the StackGAN repo's `data/birds` folder with CUB_200_2011/
and the train/test filenames and char-CNN-RNN-embeddings pickles; see that experiment's docstring and
jaxcnn/data/embeddings.py). Each image is cropped around its bounding box, resized to 76/64 of 256 and randomly
cropped back to 256x256 and flipped, as the authors (`data.augment='scale_crop,flip'`); the task resizes the real batch to 64 and 128 for the two smaller discriminators (bilinear,
antialiased, as PIL); one of the 10 caption embeddings is drawn per image and step.

The authors' birds settings (code/cfg/birds_3stages.yml and the defaults of code/miscc/config.py):
3 branches from a 64x64 trunk, GF_DIM 64, DF_DIM 64, condition (EMBEDDING_DIM) 128, Z_DIM 100, R_NUM 2,
Adam(2e-4, b1 0.5) for G and for the Ds at a constant rate, batch 24, 600 epochs, KL weight 2, unconditional
loss weight 1, no colour-consistency term for text-to-image (COLOR_LOSS 0; the paper uses it for the
unconditional tasks). The authors sample from an average of G's weights (decay 0.999 per step): here
`train.ema_decay` 0.9995, since the EMA is updated after each of the two sub-steps (0.9995^2 = 0.999);
it averages D too, which only changes `eval/d_real`. 21.2M parameters in G, 5.7M / 18.8M / 71.3M in D_64 /
D_128 / D_256. Not reproduced: the authors' "wrong" images being other real images rather than the batch's
images with rolled embeddings.

Expected (paper, Table 2; Inception-v3 on 256x256 samples): Inception Score 4.04 +- 0.05 on CUB;
eval/inception_score and eval/fid here use the project's CUB classifier (named in eval/fid_extractor), so
they are not comparable. Not run here (no CUB data offline, and a CPU cannot train the 256x256 tree): the task
and the model are tested on digits and at the paper's size by parameter count
(tests/generative/test_stackgan_v2.py).
"""
from experiments.configs.common import base_config
from jaxcnn.data.embeddings import EMBEDDING_DIM
from jaxcnn.tasks.gan import gan_defaults, stackgan_defaults
from jaxcnn.tasks.stackgan_v2 import stackganpp_defaults


def get_config():
  c = base_config()
  c.task = "stackganpp"
  c.model.name = "stackganpp"
  c.model.latent_dim = 100
  c.model.c_dim = 128
  c.model.gf_dim = 64
  c.model.df_dim = 64
  c.model.r_num = 2
  c.model.base_size = 64
  c.model.num_branches = 3
  c.data.name = "cub_stackgan"
  c.data.data_dir = ""             # required: the birds folder described above
  c.data.image_size = 256          # the largest scale
  c.data.augment = "scale_crop,flip"   # the authors' Resize(76/64 size) + RandomCrop + RandomHorizontalFlip
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 2933         # one per test image
  c.stackgan = stackgan_defaults()
  c.stackgan.embedding = "data"
  c.stackgan.embed_dim = EMBEDDING_DIM
  c.stackgan.kl_coeff = 2.0
  c.stackgan.uncond_coeff = 1.0
  c.stackganpp = stackganpp_defaults()
  c.stackganpp.color_coeff = 0.0
  c.train.steps = 221_400          # 600 epochs of 8,855 images at batch 24 (369 full batches each)
  c.train.batch_size = 24
  c.train.log_every = 100
  c.train.ema_decay = 0.9995
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "constant"
  c.eval.every = 10_000
  c.eval.batch_size = 96
  c.checkpoint.every = 2000        # the authors' snapshot interval
  return c
