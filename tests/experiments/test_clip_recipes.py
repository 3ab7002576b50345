"""The image-text experiments resolve: data, task, model and templates fit together (no compute)."""
import pytest

from experiments.configs import get_experiment
from jaxcnn import data as data_lib
from jaxcnn.tasks.contrastive import Contrastive


@pytest.mark.parametrize("name, model, dataset, loss, headline, templates", [
    ("clip_digits", "clip_tiny", "digits_captions", "clip", "eval/zeroshot_accuracy", 5),
    ("siglip_digits", "clip_tiny_siglip", "digits_captions", "siglip", "eval/zeroshot_accuracy", 5),
    ("clip_vit_b32_coco", "clip_vit_b32", "coco_captions", "clip", "eval/t2i_recall@1", 0),
    ("zeroshot_cifar10", "clip_vit_b32", "cifar10", "clip", "eval/zeroshot_accuracy", 18),
])
def test_recipe_resolves(name, model, dataset, loss, headline, templates):
  config, doc = get_experiment(name)
  assert config.task == "contrastive" and config.model.name == model and config.data.name == dataset
  assert "Expected" in doc or "Target" in doc
  spec = data_lib.resolve(config.data)
  task = Contrastive(config, data_lib.dataset_info(dataset))
  assert task.options.loss == loss and task.best_metric == (headline, "max")
  assert spec.image_hw == (task.model.image_size,) * 2 and spec.context_length == task.model.context_length
  if templates:
    assert task.class_tokens.shape == (10, templates, spec.context_length)
  if name == "zeroshot_cifar10":
    assert spec.normalize == "clip" and spec.eval_split == "test"
    assert task.class_names[0] == "airplane"
