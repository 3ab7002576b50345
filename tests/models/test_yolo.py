"""YOLOv1 (Redmon et al. 2016) and YOLOX (Ge et al. 2021): counts, shapes, loss, SimOTA, postprocess, learning.

Counts: YOLOv1's from the paper's Figure 3 layer table, summed by hand below; YOLOX's are what Megvii's
reference code (YOLOX 0.3, `exps/default/yolox_*.py`) builds at 80 classes, counted from its modules with
torch (the paper's table rounds them: nano 0.91M, tiny 5.06M, s 9.0M).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import create_model
from jaxcnn.data import canvas
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count

# ----------------------------------------------------------------------------------------------- YOLOv1


def yolov1_count_by_hand(classes=20, s=7, b=2):
  convs = [(7, 3, 64), (3, 64, 192), (1, 192, 128), (3, 128, 256), (1, 256, 256), (3, 256, 512)]
  convs += [(1, 512, 256), (3, 256, 512)] * 4 + [(1, 512, 512), (3, 512, 1024)]
  convs += [(1, 1024, 512), (3, 512, 1024)] * 2 + [(3, 1024, 1024)] * 4
  assert len(convs) == 24
  count = sum(k * k * cin * cout + cout for k, cin, cout in convs)
  count += 7 * 7 * 1024 * 4096 + 4096                       # fc1 on the 7x7x1024 map of a 448 input
  count += 4096 * s * s * (b * 5 + classes) + s * s * (b * 5 + classes)
  return count


def test_yolov1_parameter_count_is_the_papers_table():
  model = create_model("yolov1")
  variables = abstract_variables(model, (1, 448, 448, 3))
  assert param_count(variables["params"]) == yolov1_count_by_hand() == 271_703_550
  assert len(variables["params"]["backbone"]) == 24
  assert set(variables["params"]) == {"backbone", "fc1", "fc2"}
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct((2, 448, 448, 3), jnp.float32))
  assert out["pred"].shape == (2, 7, 7, 30)


def v1_loss(model, pred, targets):
  return jax.jit(lambda p, t: model.detection_loss({"pred": p}, t, IMAGE))(pred, targets)


def small_v1(**kw):
  return create_model("yolov1", **{"width": 0.0625, "fc_features": 32, **kw})


def test_yolov1_small_shapes_and_dropout():
  model = small_v1(num_classes=11, grid_size=4, boxes_per_cell=3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 96, 1)), jnp.float32)
  v = jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x))(x)
  run = jax.jit(lambda v, x, key: (model.apply(v, x)["pred"],
                                   model.apply(v, x, train=True, rngs={"dropout": key})["pred"]))
  out, a = run(v, x, jax.random.key(1))
  out2, b = run(v, x, jax.random.key(2))
  assert out.shape == (2, 4, 4, 3 * 5 + 10)
  assert not np.allclose(a, b)                      # dropout after fc1 in training
  np.testing.assert_array_equal(out, out2)


IMAGE = (448, 448)
GT = np.array([68.0, 86.0, 132.0, 214.0], np.float32)    # centre (100, 150), 64 x 128: cell row 2, col 1


def v1_targets(boxes, labels, valid):
  return {"boxes": jnp.asarray(boxes, jnp.float32)[None], "labels": jnp.asarray(labels, jnp.int32)[None],
          "valid": jnp.asarray(valid, bool)[None]}


def v1_cell_box():
  cx, cy, w, h = 100 / 448 * 7, 150 / 448 * 7, 64 / 448, 128 / 448
  return np.array([cx - 1, cy - 2, math.sqrt(w), math.sqrt(h)], np.float32)


def v1_pred(responsible_box, other_box, conf=(0.0, 1.0), cls=4, prob=1.0):
  pred = np.zeros((1, 7, 7, 30), np.float32)
  pred[0, 2, 1, 0:4], pred[0, 2, 1, 4] = other_box, conf[0]
  pred[0, 2, 1, 5:9], pred[0, 2, 1, 9] = responsible_box, conf[1]
  pred[0, 2, 1, 10 + cls] = prob
  return jnp.asarray(pred)


def test_yolov1_perfect_prediction_has_zero_loss_and_the_best_iou_predictor_is_responsible():
  model = create_model("yolov1")
  box = v1_cell_box()
  off = box + np.array([0.3, 0.0, 0.0, 0.0], np.float32)       # predictor 0: shifted, lower IoU
  targets = v1_targets([GT, [0, 0, 0, 0]], [5, 0], [True, False])
  pred = v1_pred(box, off)
  ious, best = jax.jit(lambda p, b, l, v: model.responsible(p, model.build_targets(b, l, v, IMAGE)["xyxy"][None]))(
      pred, targets["boxes"][0], targets["labels"][0], targets["valid"][0])
  np.testing.assert_allclose(ious[0, 2, 1], [ious[0, 2, 1, 0], 1.0], atol=1e-5)
  assert ious[0, 2, 1, 0] < 0.7 and best[0, 2, 1].tolist() == [False, True]
  loss, parts = v1_loss(model, pred, targets)
  assert float(loss) < 1e-9, parts
  # The same boxes with the predictors swapped: predictor 0 is now the exact one and responsible.
  swapped = v1_pred(off, box, conf=(1.0, 0.0))
  assert float(v1_loss(model, swapped, targets)[0]) < 1e-9
  # Confidences swapped instead: the exact box stays responsible, so its confidence 0 costs (0 - 1)^2 and
  # the other's 1 costs lambda_noobj * 1^2.
  _, parts = v1_loss(model, v1_pred(box, off, conf=(1.0, 0.0)), targets)
  np.testing.assert_allclose([parts["train/obj"], parts["train/noobj"], parts["train/coord"]], [1.0, 0.5, 0.0],
                             atol=1e-6)


def test_yolov1_coordinate_loss_weighting_and_sqrt_sizes():
  model = create_model("yolov1")
  box = v1_cell_box()
  shifted = box + np.array([0.1, -0.2, 0.05, 0.0], np.float32)
  far = np.array([0.5, 0.5, 0.0, 0.0], np.float32)             # an empty box: IoU 0, never responsible
  targets = v1_targets([GT], [5], [True])
  _, parts = v1_loss(model, v1_pred(shifted, far), targets)
  np.testing.assert_allclose(parts["train/coord"], 5.0 * (0.1 ** 2 + 0.2 ** 2 + 0.05 ** 2), rtol=1e-5)
  # The class term: squared error of the cell's probabilities against the one-hot class.
  _, parts = v1_loss(model, v1_pred(box, far, prob=0.6), targets)
  np.testing.assert_allclose(parts["train/class"], 0.4 ** 2, rtol=1e-5)


def test_yolov1_noobj_weight_and_batch_mean():
  model = create_model("yolov1")
  pred = jnp.zeros((2, 7, 7, 30)).at[..., 4].set(0.3).at[..., 9].set(0.3)
  empty = {"boxes": jnp.zeros((2, 3, 4)), "labels": jnp.zeros((2, 3), jnp.int32), "valid": jnp.zeros((2, 3), bool)}
  loss, parts = v1_loss(model, pred, empty)
  np.testing.assert_allclose(loss, 0.5 * 7 * 7 * 2 * 0.09, rtol=1e-5)     # per image, averaged over 2
  np.testing.assert_allclose(parts["train/noobj"], loss, rtol=1e-6)
  loss2, _ = v1_loss(create_model("yolov1", lambda_noobj=1.0), pred, empty)
  np.testing.assert_allclose(loss2, 2 * loss, rtol=1e-5)


def test_yolov1_confidence_target_is_the_iou():
  box = v1_cell_box()
  half_w = box.copy()
  half_w[2] = math.sqrt(box[2] ** 2 / 2)                          # same centre, half the width: IoU 0.5
  far = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
  targets = v1_targets([GT], [5], [True])
  pred = v1_pred(half_w, far, conf=(0.0, 0.5))
  _, parts = v1_loss(create_model("yolov1"), pred, targets)
  np.testing.assert_allclose(parts["train/obj"], 0.0, atol=1e-10)
  _, parts = v1_loss(create_model("yolov1", rescore=False), pred, targets)
  np.testing.assert_allclose(parts["train/obj"], 0.25, rtol=1e-5)


def test_yolov1_one_object_per_cell_first_slot_wins_and_padding_counts_nowhere():
  model = create_model("yolov1")
  second = GT + 4.0                                                # centre (104, 154): the same cell
  t = model.build_targets(jnp.asarray([GT, second]), jnp.asarray([5, 9]), jnp.asarray([True, True]), IMAGE)
  assert int(t["obj"].sum()) == 1 and bool(t["obj"][2, 1]) and int(t["cls"][2, 1]) == 4
  t = model.build_targets(jnp.asarray([GT, second]), jnp.asarray([5, 9]), jnp.asarray([False, True]), IMAGE)
  assert int(t["cls"][2, 1]) == 8
  pred = jnp.asarray(np.random.default_rng(0).normal(size=(1, 7, 7, 30)), jnp.float32)
  base = v1_loss(model, pred, v1_targets([GT], [5], [True]))[0]
  padded = v1_loss(model, pred, v1_targets([GT, [300, 300, 400, 400]], [5, 7], [True, False]))[0]
  np.testing.assert_allclose(base, padded, rtol=1e-7)


def test_yolov1_postprocess_fixed_shapes_and_scores():
  model = create_model("yolov1", detections_per_img=5)
  far = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
  pred = v1_pred(v1_cell_box(), far, conf=(0.0, 0.9), cls=4, prob=0.8)
  pred = jnp.concatenate([pred, jnp.zeros_like(pred)])
  det = jax.jit(lambda o: model.postprocess(o, IMAGE))({"pred": pred})
  assert det["boxes"].shape == (2, 5, 4) and det["labels"].dtype == jnp.int32 and det["valid"].dtype == bool
  assert det["valid"].tolist() == [[True] + [False] * 4, [False] * 5]
  np.testing.assert_allclose(det["boxes"][0, 0], GT, atol=1e-3)
  np.testing.assert_allclose(det["scores"][0, 0], 0.72, rtol=1e-6)
  assert int(det["labels"][0, 0]) == 5                             # class 4 -> contract label 5


# ----------------------------------------------------------------------------------------------- YOLOX

YOLOX_COUNTS = {"yolox_nano": 912_159, "yolox_tiny": 5_055_855, "yolox_s": 8_968_255,
                "yolox_m": 25_326_495, "yolox_l": 54_208_895, "yolox_x": 99_071_455}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n[-1] in "mlx" else n
                                  for n in YOLOX_COUNTS])
def test_yolox_parameter_counts_equal_the_reference(name):
  model = create_model(name)                                       # num_classes 81: COCO's 80
  variables = abstract_variables(model, (1, 64, 64, 3))
  assert param_count(variables["params"]) == YOLOX_COUNTS[name]


def test_yolox_output_shapes_and_bad_values():
  model = create_model("yolox_nano", num_classes=11, width=0.125)
  variables = abstract_variables(model, (2, 64, 96, 1))
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct((2, 64, 96, 1), jnp.float32))
  a = 8 * 12 + 4 * 6 + 2 * 3
  assert {k: v.shape for k, v in out.items()} == {"bbox_regression": (2, a, 4), "bbox_objectness": (2, a, 1),
                                                   "cls_logits": (2, a, 10)}
  assert "backbone" in variables["params"] and "batch_stats" in variables
  with pytest.raises(UserError, match="divisible by 32"):
    abstract_variables(model, (1, 48, 64, 1))
  with pytest.raises(UserError, match="num_classes"):
    create_model("yolox_s", num_classes=1)
  with pytest.raises(UserError, match="strides"):
    create_model("yolox_s", strides=(8, 16))


SIZE = (64, 64)
A = 84                                            # 8x8 + 4x4 + 2x2 locations at 64x64
BOX_A = [16.0, 16.0, 32.0, 32.0]                  # centre (24, 24)


def tiny_boxes():
  return np.tile(np.array([[0.0, 0.0, 1e-3, 1e-3]], np.float32), (A, 1))


def cxcywh(xyxy):
  x1, y1, x2, y2 = xyxy
  return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def simota(model, preds, gt_boxes, gt_labels, gt_valid, cls_logits=None):
  cls_logits = jnp.zeros((A, model.num_fg_classes)) if cls_logits is None else cls_logits
  fn = jax.jit(lambda *args: model.simota(*args, SIZE))
  return fn(jnp.asarray(preds), cls_logits, jnp.zeros((A,)), jnp.asarray(gt_boxes, jnp.float32),
            jnp.asarray(gt_labels, jnp.int32), jnp.asarray(gt_valid))


def test_simota_candidates_dynamic_k_and_padding():
  model = create_model("yolox_s", num_classes=4)
  preds = tiny_boxes()
  # Locations whose centre is within 1.5 strides of (24, 24): stride 8 x, y in {2, 3}; stride 16 x, y in
  # {0, 1, 2}; every stride-32 location. Three of them predict the box exactly, and location 0 (not a
  # candidate) too; locations 54 and 63 predict the padded slot's box.
  for i in (19, 26, 65, 0):
    preds[i] = cxcywh(BOX_A)
  for i in (54, 63):
    preds[i] = cxcywh([44.0, 44.0, 60.0, 60.0])
  out = simota(model, preds, [BOX_A, [44.0, 44.0, 60.0, 60.0]], [1, 2], [True, False])
  assert int(out["dynamic_k"][0]) == 3                         # int(1 + 1 + 1): location 0 is no candidate
  assert np.flatnonzero(out["fg"]).tolist() == [19, 26, 65]
  np.testing.assert_allclose(out["iou"][np.array([19, 26, 65])], 1.0)
  assert not bool(out["matching"][1].any())


def test_simota_cheapest_object_keeps_a_shared_location():
  model = create_model("yolox_s", num_classes=4)
  preds = tiny_boxes()
  for i in (19, 26, 65):
    preds[i] = cxcywh(BOX_A)
  # Two objects with the same box, classes 1 and 2; the predictions favour class 2, so it is cheaper.
  cls_logits = jnp.full((A, 3), -5.0).at[:, 1].set(5.0)
  out = simota(model, preds, [BOX_A, BOX_A], [1, 2], [True, True], cls_logits)
  assert out["dynamic_k"].tolist() == [3, 3]
  assert np.flatnonzero(out["fg"]).tolist() == [19, 26, 65]
  assert out["gt"][np.array([19, 26, 65])].tolist() == [1, 1, 1]
  assert not bool(out["matching"][0].any())


def test_simota_penalises_locations_outside_the_objects_centre_region():
  model = create_model("yolox_s", num_classes=4)
  preds = tiny_boxes()
  box_b = [44.0, 44.0, 60.0, 60.0]                            # centre (52, 52)
  for i in (54, 63):                                           # stride-8 (6, 6), (7, 7): only B's region
    preds[i] = cxcywh(BOX_A)
  out = simota(model, preds, [BOX_A, box_b], [1, 2], [True, True])
  assert int(out["dynamic_k"][0]) == 2
  chosen_a = np.flatnonzero(out["matching"][0])
  assert len(chosen_a) == 2 and not {54, 63} & set(chosen_a.tolist())
  xy, strides = model.grid(SIZE)
  centres = (xy + 0.5) * strides[:, None]
  assert np.all(np.abs(centres[chosen_a] - 24.0) < 1.5 * strides[chosen_a, None])


def x_loss(model, out, targets):
  return jax.jit(lambda o, t: model.detection_loss(o, t, SIZE))(out, targets)


def perfect_outputs(model, box, label):
  """Raw outputs whose every location decodes to `box`, class logits +-20 for `label`."""
  xy, strides = model.grid(SIZE)
  cx, cy, w, h = cxcywh(box)
  reg = np.stack([cx / strides - xy[:, 0], cy / strides - xy[:, 1], np.log(w / strides), np.log(h / strides)], -1)
  cls = np.full((A, model.num_fg_classes), -20.0, np.float32)
  cls[:, label - 1] = 20.0
  return {"bbox_regression": jnp.asarray(reg, jnp.float32)[None], "bbox_objectness": jnp.full((1, A, 1), -20.0),
          "cls_logits": jnp.asarray(cls)[None]}


def test_yolox_loss_perfect_prediction_is_zero_and_empty_image_is_obj_bce():
  model = create_model("yolox_s", num_classes=4)
  targets = {"boxes": jnp.asarray([[BOX_A, [0, 0, 0, 0]]], jnp.float32), "labels": jnp.asarray([[3, 0]]),
             "valid": jnp.asarray([[True, False]])}
  out = perfect_outputs(model, BOX_A, 3)
  decoded = model.decode(out["bbox_regression"], SIZE)[0]
  fg = jax.jit(lambda *a: model.simota(*a, SIZE))(decoded, out["cls_logits"][0], out["bbox_objectness"][0],
                                                 targets["boxes"][0], targets["labels"][0], targets["valid"][0])["fg"]
  assert 1 <= int(fg.sum()) <= 10
  out["bbox_objectness"] = jnp.where(fg[None, :, None], 20.0, -20.0)
  loss, parts = x_loss(model, out, targets)
  assert float(loss) < 1e-6, parts
  # Boxes off by a few pixels: the IoU term (5 x (1 - IoU^2)) is no longer zero.
  shifted = dict(out, bbox_regression=out["bbox_regression"].at[..., 0].add(0.25))
  assert float(x_loss(model, shifted, targets)[1]["train/iou"]) > 0.1
  empty = {k: jnp.concatenate([v, v]) for k, v in dict(targets, valid=jnp.zeros((1, 2), bool)).items()}
  zeros = {k: jnp.zeros((2,) + v.shape[1:]) for k, v in out.items()}
  loss, parts = x_loss(model, zeros, empty)
  np.testing.assert_allclose(loss, 2 * A * math.log(2), rtol=1e-6)    # BCE(0, 0) everywhere / max(0, 1)
  np.testing.assert_allclose(parts["train/objectness"], loss, rtol=1e-6)


def test_yolox_loss_normaliser_is_global_with_axis_name():
  model = create_model("yolox_s", num_classes=4)
  rng = np.random.default_rng(0)
  out = {"bbox_regression": jnp.asarray(rng.normal(0, 0.3, (2, A, 4)), jnp.float32),
         "bbox_objectness": jnp.asarray(rng.normal(size=(2, A, 1)), jnp.float32),
         "cls_logits": jnp.asarray(rng.normal(size=(2, A, 3)), jnp.float32)}
  targets = {"boxes": jnp.asarray([[BOX_A, [30, 34, 58, 60]], [[4, 40, 20, 62], [0, 0, 0, 0]]], jnp.float32),
             "labels": jnp.asarray([[1, 3], [2, 0]]), "valid": jnp.asarray([[True, True], [True, False]])}
  whole, _ = x_loss(model, out, targets)
  shard = lambda o, t: model.detection_loss(jax.tree.map(lambda v: v[None], o), jax.tree.map(lambda v: v[None], t),
                                            SIZE, axis_name="d")[0]
  per_shard = jax.jit(jax.vmap(shard, axis_name="d"))(out, targets)
  np.testing.assert_allclose(jnp.sum(per_shard), whole, rtol=1e-5)
  alone = [x_loss(model, jax.tree.map(lambda v: v[i:i + 1], out), jax.tree.map(lambda v: v[i:i + 1], targets))[0]
           for i in range(2)]
  assert not np.isclose(sum(alone), whole, rtol=1e-3)               # per-image normalisers differ


def test_yolox_postprocess_scores_labels_and_nms():
  model = create_model("yolox_s", num_classes=4, detections_per_img=4)
  xy, strides = model.grid(SIZE)
  reg = np.zeros((1, A, 4), np.float32)
  obj = np.full((1, A, 1), -10.0, np.float32)
  cls = np.full((1, A, 3), -10.0, np.float32)
  for i, o, c, label in ((27, 3.0, 2.0, 3), (28, 2.0, 2.0, 3), (36, 1.0, 2.0, 1)):
    reg[0, i] = [0.5, 0.5, math.log(2.0), math.log(2.0)]          # 16 x 16 boxes at the locations' centres
    obj[0, i], cls[0, i, label - 1] = o, c
  reg[0, 28, 0] = -0.5                                             # 8 px left of 28's centre: on top of 27's
  out = {"bbox_regression": jnp.asarray(reg), "bbox_objectness": jnp.asarray(obj), "cls_logits": jnp.asarray(cls)}
  det = jax.jit(lambda o: model.postprocess(o, SIZE))(out)
  sig = lambda v: 1 / (1 + math.exp(-v))
  assert det["valid"][0].tolist() == [True, True, False, False]    # 28 suppressed by 27 (IoU 1 > 0.65)
  np.testing.assert_allclose(det["scores"][0, :2], [sig(3) * sig(2), sig(1) * sig(2)], rtol=1e-6)
  assert det["labels"][0, :2].tolist() == [3, 1]
  cx, cy = (xy[27] + 0.5) * 8
  np.testing.assert_allclose(det["boxes"][0, 0], [cx - 8, cy - 8, cx + 8, cy + 8], atol=1e-5)


# ----------------------------------------------------------------------------------------------- learning


def digits_batch(n=4):
  c = canvas.digits_canvas_splits()["train"]
  images = jnp.asarray(c["image"][:n], jnp.float32) / 255.0 - 0.1
  return images, {"boxes": jnp.asarray(c["boxes"][:n]), "labels": jnp.asarray(c["classes"][:n] + 1),
                  "valid": jnp.asarray(c["valid"][:n])}


@pytest.mark.parametrize("name,kw,steps,lr", [
    pytest.param("yolox_tiny", dict(width=0.125), 40, 3e-3, marks=pytest.mark.slow),
    ("yolov1", dict(width=0.0625, fc_features=64), 25, 3e-3)])
def test_a_few_steps_reduce_the_loss(name, kw, steps, lr):
  model = create_model(name, num_classes=11, **kw)
  images, targets = digits_batch()
  v = jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x))(images)
  params, state = v["params"], {k: x for k, x in v.items() if k != "params"}
  tx = optax.adam(lr)

  @jax.jit
  def step(params, state, opt, rng):
    def loss_fn(p):
      out, new = model.apply({"params": p, **state}, images, train=True, rngs={"dropout": rng}, mutable=list(state))
      return model.detection_loss(out, targets, images.shape[1:3])[0], new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new, opt, loss

  opt, losses = tx.init(params), []
  for i in range(steps):
    params, state, opt, loss = step(params, state, opt, jax.random.key(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_yolox_loss_descends_on_free_outputs():
  """Adam on the raw outputs themselves (no network): the reassigned, decoded loss goes down to near zero."""
  model = create_model("yolox_s", num_classes=11)
  _, targets = digits_batch(2)
  rng = np.random.default_rng(0)
  out = {"bbox_regression": jnp.asarray(rng.normal(0, 0.5, (2, A, 4)), jnp.float32),
         "bbox_objectness": jnp.zeros((2, A, 1)), "cls_logits": jnp.zeros((2, A, 10))}
  tx = optax.adam(0.1)

  @jax.jit
  def run(out):
    def body(carry, _):
      out, opt = carry
      loss, grads = jax.value_and_grad(lambda o: model.detection_loss(o, targets, SIZE)[0])(out)
      updates, opt = tx.update(grads, opt, out)
      return (optax.apply_updates(out, updates), opt), loss
    return jax.lax.scan(body, (out, tx.init(out)), None, length=150)[1]

  losses = np.asarray(run(out))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.1 * losses[0], losses[::15]
