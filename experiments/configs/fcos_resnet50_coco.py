"""torchvision's FCOS-ResNet50-FPN recipe on COCO 2017 from your own files: a GPU recipe.

    python -m jaxcnn.data.prepare coco2017_det
    python -m experiments.run --exp=fcos_resnet50_coco --config.finetune.weights=resnet50-0676ba61.pth

Source: torchvision's references/detection README ("FCOS ResNet-50 FPN": `train.py --dataset coco --model
fcos_resnet50_fpn --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 --lr 0.01 --amp
--weights-backbone ResNet50_Weights.IMAGENET1K_V1` on 8 GPUs x 2 images): the RetinaNet recipe of
`retinanet_resnet50_coco.py` (SGD 0.01 at batch 16, warmup, x0.1 at epochs 16 and 22 of 26, frozen BN and
trainable_backbone_layers=3, 800/1333 images, flips) with mixed precision (`--amp`: here bfloat16 compute,
float32 parameters). Target: box AP 39.2 on val2017 (torchvision's published figure for these weights).
The same differences as that file (padded 1333 x 1333 batches, empty images kept, 81 outputs). Not
measured here (no GPU, no COCO files).
"""
from experiments.configs import retinanet_resnet50_coco


def get_config():
  c = retinanet_resnet50_coco.get_config(model_name="fcos_resnet50_fpn")
  c.train.compute_dtype = "bfloat16"
  return c
