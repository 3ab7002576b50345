"""StackGAN Stage I (Zhang et al. 2017) on CUB-200-2011 birds at 64x64 from char-CNN-RNN text embeddings.

    python -m experiments.run --exp=stackgan_cub --workdir=workdirs/stackgan_cub \
        --config.data.data_dir=/path/to/birds
    python -m experiments.run --exp=stackgan_cub_stage2 --workdir=workdirs/stackgan_cub_stage2 \
        --config.data.data_dir=/path/to/birds --config.stackgan.stage1_workdir=workdirs/stackgan_cub

Data: you provide it (nothing is downloaded); `data.data_dir` must name one
folder (the StackGAN repo's `data/birds`) holding

    CUB_200_2011/images/<class>/<name>.jpg     from Caltech's CUB_200_2011.tgz, unpacked into the folder
    CUB_200_2011/images.txt                    (same archive)
    CUB_200_2011/bounding_boxes.txt            (same archive)
    train/filenames.pickle                     8,855 '<class>/<name>' keys   } the StackGAN README's "char-CNN-RNN
    train/char-CNN-RNN-embeddings.pickle       [8,855, 10, 1024]             } text embeddings for birds"
    test/filenames.pickle                      2,933 keys                    } (birds.zip), Reed et al. 2016
    test/char-CNN-RNN-embeddings.pickle        [2,933, 10, 1024]             }

(`class_info.pickle` may be there too; it is not needed). A missing file stops
the run at once with a one-line error naming it (exit status 2). Details and
sources: jaxcnn/data/embeddings.py.

What the run does with it, as the authors' code: each image is cropped to a
square of 1.5 x the longer side of its bounding box around the box centre,
resized to 76x76 (bilinear; int(size * 76 / 64) in general), cropped to 64x64
at a random offset and randomly flipped (`data.augment='scale_crop,flip'`;
eval images are resized to 64x64 directly); per image and step one of its 10
caption embeddings is drawn at random; the matching-aware discriminator also
sees each real image with another image's embedding (the batch rolled by one,
pairs of the same class left out) as fake.

The authors' Stage-I settings: z 100-d, condition 128-d, GF_DIM 128,
DF_DIM 64, Adam(2e-4, b1=0.5), batch 64, 600 epochs with the learning rate
halved every 100, KL weight 2. Expected (paper, Table 1; Inception-v3 on
256x256 Stage-II samples): Inception Score 3.70 +- 0.04; eval/inception_score
and eval/fid here use the project's CUB classifier (a LeNet trained on these
crops at 32x32, named in eval/fid_extractor), so they are not comparable.
Not run to completion here (no CUB data offline; the pipeline, task and
both stages are tested end to end on a miniature birds folder:
tests/generative/test_stackgan_cub_run.py).
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
  c.data.data_dir = ""             # required: the birds folder described above
  c.data.image_size = 64
  c.data.augment = "scale_crop,flip"   # the authors' Resize(76/64 size) + RandomCrop + RandomHorizontalFlip
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
