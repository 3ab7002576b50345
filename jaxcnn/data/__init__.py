"""Data: dataset sources (embedded or tfds ArrayRecord), CPU transforms, grain pipelines.

    info = dataset_info('cifar10')
    it = train_iterator(cfg.data, global_batch_size=128, seed=0,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                 # {'image': float32 [128 / P, S, S, C], 'label': int32 [128 / P]}
    state = it.get_state()           # JSON; it.set_state(state) resumes exactly
    for batch in eval_iterator(cfg.data, global_batch_size=512): ...   # + 'mask'

Missing tfds datasets: `python -m jaxcnn.data.prepare NAME` (no TensorFlow needed).
"""
from jaxcnn.data.config import DataSpec, default_data_config, resolve
from jaxcnn.data.pipeline import EvalBatches, eval_iterator, train_iterator
from jaxcnn.data.sources import (ArraySource, DatasetInfo, TfdsSource, channel_stats, dataset_info,
                                 dataset_names, embedded_names, get_source)

__all__ = [
    "ArraySource", "DataSpec", "DatasetInfo", "EvalBatches", "TfdsSource", "channel_stats", "dataset_info",
    "dataset_names", "default_data_config", "embedded_names", "eval_iterator", "get_source", "resolve",
    "train_iterator",
]
