"""Evaluation of generative models.

  fid        Fréchet distance (FID) and Inception Score in JAX, on any features
  extractor  the classifier whose features and predictions the scores use
  grids      PNG grids of samples, reconstructions and interpolations

Evaluation of dense prediction:

  segmentation  confusion matrix, mIoU and overlay pictures
  detection     COCO metrics (pycocotools' COCOeval), PASCAL VOC mAP, detection pictures
"""
