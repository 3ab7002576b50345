"""StackGAN Stage I (Zhang et al. 2017) on CUB-200-2011 birds at 64x64 from char-CNN-RNN text embeddings.

    python -m experiments.run --exp=stackgan_cub --workdir=workdirs/stackgan_cub \
        --config.data.data_dir=/path/to/birds
    python -m experiments.run --exp=stackgan_cub_stage2 --config.stackgan.stage1_workdir=workdirs/stackgan_cub

Data (the user provides it; nothing is downloaded): the StackGAN `birds/`
folder, i.e. CUB_200_2011/{images/, images.txt, bounding_boxes.txt} from
Caltech and {train,test}/{filenames.pickle, char-CNN-RNN-embeddings.pickle}
(10 x 1024-d embeddings per image, Reed et al. 2016) from the StackGAN
README's "preprocessed char-CNN-RNN text embeddings for birds"; the full list
and sources are in jaxcnn/data/embeddings.py (`CubEmbeddingSource`).
Status: the source reads that layout, and the StackGAN task trains on
`batch['embedding']` ([B, 10, 1024]: one caption drawn per image and step),
but the data pipeline (jaxcnn.data) has no hook yet to register an outside
source by name nor to carry a per-example field besides image and label, so
this experiment stops at config validation with "unknown dataset
'cub_stackgan'" until it does.

The authors' Stage-I settings: z 100-d, condition 128-d, GF_DIM 128,
DF_DIM 64, Adam(2e-4, b1=0.5), batch 64, 600 epochs with the learning rate
halved every 100, KL weight 2. Expected (paper, Table 1; Inception-v3 on
256x256 Stage-II samples): Inception Score 3.70 +- 0.04; eval/inception_score
here uses the project's CUB classifier instead, so it is not comparable.
"""
from experiments.configs.common import base_config
from jaxcnn.data.embeddings import EMBEDDING_DIM
from jaxcnn.tasks.gan import gan_defaults, stackgan_defaults


def get_config():
  c = base_config()
  c.task = "stackgan"
  c.model.name = "stackgan_stage1"
  c.model.latent_dim = 100
  c.model.c_dim = 128
  c.model.gf_dim = 128
  c.model.df_dim = 64
  c.model.ef_dim = 128
  c.data.name = "cub_stackgan"
  c.data.image_size = 64
  c.data.augment = "flip"
  c.data.normalize = "symmetric"
  c.gan = gan_defaults()
  c.gan.fid_samples = 2933         # one per test image
  c.stackgan = stackgan_defaults()
  c.stackgan.embedding = "data"
  c.stackgan.embed_dim = EMBEDDING_DIM
  c.train.steps = 83_000           # 600 epochs of 8,855 images at batch 64
  c.train.batch_size = 64
  c.train.log_every = 100
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.schedule = "step"        # halved every 100 epochs
  c.optim.step_at = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)
  c.optim.step_factor = 0.5
  c.eval.every = 5000
  c.eval.batch_size = 512
  c.checkpoint.every = 5000
  return c
