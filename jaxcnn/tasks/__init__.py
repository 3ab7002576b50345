"""Tasks by name: `config.task` selects how a batch becomes a loss, metrics and eval."""
import importlib

from jaxcnn.errors import unknown
from jaxcnn.tasks.base import Task, TrainState, model_kwargs

# name -> "module:Class"; imported lazily so a task's extra dependencies load only when used.
_TASKS = {
    "classification": "jaxcnn.tasks.classification:Classification",
    "vae": "jaxcnn.tasks.vae:VAE",
    "gan": "jaxcnn.tasks.gan:GAN",
    "stackgan": "jaxcnn.tasks.gan:StackGAN",
    "stackganpp": "jaxcnn.tasks.stackgan_v2:StackGANpp",
    "segmentation": "jaxcnn.tasks.segmentation:Segmentation",
    "detection": "jaxcnn.tasks.detection:Detection",
    "distill": "jaxcnn.tasks.distill:Distill",
    "video": "jaxcnn.tasks.video:VideoClassification",
    "contrastive": "jaxcnn.tasks.contrastive:Contrastive",
    "sequence": "jaxcnn.tasks.sequence:SequenceRecognition",
}


def register_task(name: str, target: str):
  _TASKS[name] = target


def task_names():
  return sorted(_TASKS)


def get_task(config, data_info, axis_name=None) -> Task:
  name = config.get("task", "classification")
  if name not in _TASKS:
    raise unknown("task", name, _TASKS)
  module, cls = _TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config, data_info, axis_name)


__all__ = ["Task", "TrainState", "get_task", "model_kwargs", "register_task", "task_names"]
