"""torchvision's FCN-ResNet50 recipe on PASCAL VOC 2012 (+ SBD) from your own files: a GPU recipe.

    python -m experiments.run --exp=fcn_resnet50_voc --config.data.data_dir=/path/to/VOCdevkit/.. \
        --config.finetune.weights=resnet50-0676ba61.pth

The same recipe as `deeplabv3_resnet50_voc` (torchvision's segmentation reference: SGD 0.02, poly, 30 epochs,
aux loss 0.5, scale 0.5-2.0 / 480 crop / flip) with torchvision's FCN head on the dilated ResNet-50 (output
stride 8). Target: torchvision publishes 60.5 mIoU for fcn_resnet50 on its COCO-with-VOC-categories subset (not
VOC val); FCN-8s reaches 62.2 mIoU on VOC 2012 test with VGG-16 (Long et al. 2015). Not measured here.
"""
from experiments.configs.deeplabv3_resnet50_voc import get_config as deeplab_config


def get_config():
  return deeplab_config(model_name="fcn_resnet50")
