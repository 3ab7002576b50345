"""Why a model decides what it decides: CAMs, gradient attributions, occlusion, ZFNet's deconvnet.

    from jaxcnn import explain
    target = explain.Target("class", jnp.array([3, 7]))       # or 'pixels' (segmentation), 'box' (detection)
    maps = explain.run(model, variables, images, target, method="gradcam")          # [B, h, w], layer default
    attr, gap = explain.run(model, variables, images, target, method="ig")         # [B, H, W, C], [B]

`run` checks the method and layer (UserError listing the valid ones), then calls a jitted function
cached per (model, method, layer, options). The methods: cam.py (Grad-CAM family), gradients.py (input
attributions, the ReLU backward-rule rewrite), deconvnet.py (Zeiler & Fergus), probe.py (layers, scores).
`python -m jaxcnn.explain` writes overlays and grids (see __main__.py).
"""
import functools

import jax

from jaxcnn.errors import UserError, unknown
from jaxcnn.explain import cam as cam_lib
from jaxcnn.explain import deconvnet, gradients, probe
from jaxcnn.explain.probe import Target, check_classes, layer_shapes, resolve_layer  # noqa: F401

# method -> (function, uses a target layer)
METHODS = {
    **{m: (functools.partial(cam_lib.cam, method=m), True) for m in cam_lib.CAM_METHODS},
    "guided_gradcam": (cam_lib.guided_gradcam, True),
    "gradients": (gradients.vanilla, False),
    "smoothgrad": (gradients.smoothgrad, False),
    "ig": (gradients.integrated_gradients, False),
    "guided_backprop": (gradients.guided_backprop, False),
    "occlusion": (gradients.occlusion, False),
    "deconvnet": (deconvnet.project, True),
}


@functools.lru_cache(maxsize=64)
def _compiled(model, method: str, layer, options: tuple):
  fn, uses_layer = METHODS[method]
  kwargs = dict(options, **({"layer": layer} if uses_layer else {}))
  return jax.jit(functools.partial(fn, model, **kwargs))


def run(model, variables, x, target: Target, method: str = "gradcam", layer=None, **options):
  """`method`'s attribution of `target` for images `x` [B, H, W, C]; `layer` ('' / None: the family
  default) for the layer methods. Options: the method function's keyword arguments (e.g. `steps=`)."""
  if method not in METHODS:
    raise unknown("method", method, METHODS)
  if target.kind not in probe.TARGET_KINDS:
    raise unknown("target kind", target.kind, probe.TARGET_KINDS)
  if METHODS[method][1]:
    layer = resolve_layer(model, variables, x, layer)
  elif layer:
    raise UserError(f"method '{method}' takes no target layer (layer methods: "
                    f"{', '.join(m for m, (_, uses) in METHODS.items() if uses)})")
  return _compiled(model, method, layer, tuple(sorted(options.items())))(variables, x, target)
