"""torchvision's Mask R-CNN-ResNet50-FPN recipe on COCO 2017 from your own files: a GPU recipe, not run here.

    # data.data_dir holds COCO's official files: annotations/instances_{train,val}2017.json, {train,val}2017/
    python -m experiments.run --exp=maskrcnn_resnet50_coco --config.data.data_dir=/path/to/coco \
        --config.finetune.weights=resnet50-0676ba61.pth

Source: torchvision's references/detection README ("Mask R-CNN": `train.py --dataset coco --model
maskrcnn_resnet50_fpn --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 --weights-backbone
ResNet50_Weights.IMAGENET1K_V1` on 8 GPUs x 2 images) and its train.py defaults: the schedule, augmentation
and frozen backbone parts of `fasterrcnn_resnet50_coco.py` (SGD momentum 0.9, weight decay 1e-4 on every
parameter, lr 0.02 at batch 16, 1,000 warmup steps, x0.1 at epochs 16 and 22 of 26, horizontal flips,
shorter side 800 / longer at most 1333, frozen BatchNorms, layer2-4 trained), with model
`maskrcnn_resnet50_fpn` and dataset `coco2017_inst` (instance masks from pycocotools; tfds coco/2017 has
none). Target: box AP 37.9 and mask AP 34.6 on val2017 (eval/map and eval/mask_map; torchvision's published
figures for MaskRCNN_ResNet50_FPN_Weights.COCO_V1, torchvision.models.detection docs). Differences as in
`fasterrcnn_resnet50_coco.py` (no aspect-ratio grouping, images padded to 1333 x 1333, empty images kept,
warmup from 0, 81 outputs); and the masks travel at the padded image size in data.max_boxes = 100 slots
(uint8 [16, 100, 1333, 1333], about 2.8 GB of host memory per batch), where torchvision keeps one mask per
object. Not measured here (no GPU, no COCO files).
"""
from experiments.configs import retinanet_resnet50_coco


def get_config():
  c = retinanet_resnet50_coco.get_config(model_name="maskrcnn_resnet50_fpn")
  c.data.name = "coco2017_inst"
  c.optim.lr = 0.02
  return c
