"""Data: dataset sources (embedded or tfds ArrayRecord), CPU transforms, grain pipelines.

    info = dataset_info('cifar10')
    it = train_iterator(cfg.data, global_batch_size=128, seed=0,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                 # {'image': float32 [128 / P, H, W, C], 'label': int32 [128 / P]}
    state = it.get_state()           # JSON; it.set_state(state) resumes exactly
    for batch in eval_iterator(cfg.data, global_batch_size=512): ...   # + 'mask'

Missing tfds datasets: `python -m jaxcnn.data.prepare NAME` (no TensorFlow needed).
Datasets in the user's own files: `register_source(info, open_split)`, then
`data.name = info.name` and `data.data_dir = <their folder>` (see `sources`);
`cub_stackgan` (CUB birds + StackGAN text embeddings), `voc2012_seg` (PASCAL VOC
2012 segmentation, `voc`) and `cityscapes` are registered on import. Segmentation:
`digits_seg` (embedded canvases of digits, `canvas`), tfds `oxford_iiit_pet`
(trimaps, `pets`); their batches carry 'segmentation' int32 [b, H, W] (see pipeline).
Detection: `digits_det` (embedded), tfds `voc2007_det`, `voc2012_det`, `voc0712_det` (07+12 joined,
`voc_det`), `coco2017_det` (`coco`, with COCO's 80 <-> 91 label maps) and, from COCO's files with
instance masks, `coco2017_inst` (`coco.register_coco_instances`); their batches carry 'boxes',
'boxes_valid', 'box_classes' and the dataset's flags padded to data.max_boxes (see `detection`, pipeline).

Video: `moving_digits` (embedded), tfds `ucf101` and the user's folders (`video.register_video_folder`); their
batches carry 'image' float32 [b, T, H, W, C] clips (T = data.frames; see pipeline).

Image-text: `digits_captions` (embedded), the user's pairs `image_text_csv` / `_jsonl` / `_folder` and tfds
`coco_captions` (`captions`); their batches carry 'captions' int32 [b, K, L] CLIP token ids (see pipeline).

    spec = element_spec(cfg.data, global_batch_size=128)   # {field: jax.ShapeDtypeStruct} of a local train batch
"""
from jaxcnn.data.config import DataSpec, default_data_config, resolve
from jaxcnn.data.pipeline import EvalBatches, element_spec, eval_iterator, train_iterator
from jaxcnn.data.sources import (ArraySource, DatasetInfo, IndexedSource, TfdsSource, channel_stats,
                                 dataset_info, dataset_names, embedded_names, extra_field_specs, get_source,
                                 register_embedded, register_source, register_tfds_dataset, registered_names)
from jaxcnn.data import embeddings as _embeddings  # noqa: F401,E402  (registers cub_stackgan)
from jaxcnn.data import canvas as _canvas  # noqa: F401,E402  (registers digits_seg, digits_det)
from jaxcnn.data import ocr as _ocr  # noqa: F401,E402  (registers digit_strings, mjsynth, iiit5k)
from jaxcnn.data import cityscapes as _cityscapes  # noqa: F401,E402  (registers cityscapes)
from jaxcnn.data import pets as _pets  # noqa: F401,E402  (registers oxford_iiit_pet)
from jaxcnn.data import voc as _voc  # noqa: F401,E402  (registers voc2012_seg)
from jaxcnn.data import voc_det as _voc_det  # noqa: F401,E402  (registers voc2007_det, voc2012_det, voc0712_det)
from jaxcnn.data import coco as _coco  # noqa: F401,E402  (registers coco2017_det, coco2017_inst)
from jaxcnn.data import captions as _captions  # noqa: F401,E402  (registers digits_captions, image_text_*, coco_captions)
from jaxcnn.data import video as _video  # noqa: F401,E402  (registers moving_digits, ucf101; register_video_folder)

__all__ = [
    "ArraySource", "DataSpec", "DatasetInfo", "EvalBatches", "IndexedSource", "TfdsSource", "channel_stats",
    "dataset_info", "dataset_names", "default_data_config", "element_spec", "embedded_names", "eval_iterator",
    "extra_field_specs", "get_source", "register_embedded", "register_source", "register_tfds_dataset", "registered_names", "resolve",
    "train_iterator",
]
