"""torchvision's Faster R-CNN-ResNet50-FPN recipe on COCO 2017 from your own files: a GPU recipe.

    python -m jaxcnn.data.prepare coco2017_det
    python -m experiments.run --exp=fasterrcnn_resnet50_coco --config.finetune.weights=resnet50-0676ba61.pth

Source: torchvision's references/detection README ("Faster R-CNN ResNet-50 FPN": `train.py --dataset coco
--model fasterrcnn_resnet50_fpn --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3
--weights-backbone ResNet50_Weights.IMAGENET1K_V1` on 8 GPUs x 2 images) and its train.py defaults: SGD
momentum 0.9, weight decay 1e-4 on every parameter, lr 0.02 at batch 16 with a linear warmup over the
first 1,000 steps, x0.1 at epochs 16 and 22 of 26, horizontal flips, images with the shorter side 800 and
the longer at most 1333. The ImageNet ResNet-50 goes into `backbone` (converter `resnet50`); as
torchvision with pretrained backbone weights, its BatchNorms are frozen (`model.frozen_bn`, affine
parameters fixed) and only layer2-4 train (`trainable_backbone_layers=3`, the `finetune.freeze` regex of
`backbone_freeze_pattern`). Target: box AP 37.0 on val2017 (torchvision's published figure for
FasterRCNN_ResNet50_FPN_Weights.COCO_V1). Differences, as in `retinanet_resnet50_coco.py`: torchvision
groups images of similar aspect ratio (factor 3) and drops training images without annotations; here
batches are padded to 1333 x 1333 (`data.resize='fit'`) and empty images are kept as background, the
warmup starts at 0 instead of 0.001 x lr, and the heads have 81 outputs (80 classes + background;
torchvision's COCO weights use COCO's 91 ids). Not measured here (no GPU, no COCO files).
"""
from experiments.configs import retinanet_resnet50_coco


def get_config():
  c = retinanet_resnet50_coco.get_config(model_name="fasterrcnn_resnet50_fpn")
  c.optim.lr = 0.02
  return c
