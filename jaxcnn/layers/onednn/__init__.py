"""2-D convolutions and self-attention on XLA:CPU through oneDNN, the library PyTorch uses on CPU.

`conv` is an NHWC/HWIO float32 convolution whose forward, input gradient and
kernel gradient are each one XLA FFI custom call into oneDNN's convolution
primitives (`conv_ffi.cc` beside this file), tied together by a
`jax.custom_vjp`, so `jit` and `grad` of model code work unchanged.
`attention` is multi-head scaled dot-product attention on the fused qkv
projection, one custom call forward and one backward (`attention_ffi.cc`):
oneDNN batched matmuls that read q, k, v through strided views, so the
head-major transposes XLA needs are never made.

The extension is compiled from the shipped C++ source with the system C++
compiler (`$CXX`, else `g++`) on first use, against the `onednn` and
`onednn-devel` wheels (the `cpu` extra of jaxcnn), into `$JAXCNN_CACHE_DIR` (default `~/.cache/jaxcnn`);
the file name carries a hash of everything it was built from, so a new jaxlib
or oneDNN builds a new one. Building takes a few seconds, once.

`available()` is False (logged once, and the caller keeps its XLA
formulation) when the wheels, the compiler or a oneDNN CPU engine are
missing. The PyPI oneDNN is a SYCL build whose CPU engine runs on the OpenCL
CPU runtime of `intel-opencl-rt` (one of its dependencies); its loader is
pointed at that runtime through `OCL_ICD_FILENAMES` before the engine starts.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import subprocess
import tempfile
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

_SOURCES = tuple(pathlib.Path(__file__).with_name(f) for f in ("conv_ffi.cc", "attention_ffi.cc"))
_HEADER = pathlib.Path(__file__).with_name("onednn_common.h")  # included by both sources
_TARGETS = tuple(f"jaxcnn_onednn_conv_{n}" for n in ("fwd", "bwd_data", "bwd_weights")) + (
    "jaxcnn_onednn_attention_fwd", "jaxcnn_onednn_attention_bwd")
_log = logging.getLogger(__name__)

Pads = Tuple[Tuple[int, int], Tuple[int, int]]


class Unavailable(RuntimeError):
  """Why the oneDNN extension cannot be used here (a message for the log)."""


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  """The installed file of distribution `dist` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.distribution(dist).files or []
  except importlib.metadata.PackageNotFoundError as e:
    raise Unavailable(f"the '{dist}' package is not installed (pip install 'jaxcnn[cpu]')") from e
  for f in files:
    if str(f).replace(os.sep, "/").endswith(suffix):
      return pathlib.Path(f.locate()).resolve()
  raise Unavailable(f"the '{dist}' package has no file '{suffix}'")


def _paths():
  """(oneDNN include dir, dir of libdnnl.so, OpenCL CPU runtime library or None)."""
  header = _dist_file("onednn-devel", "oneapi/dnnl/dnnl.hpp")
  library = _dist_file("onednn", "/libdnnl.so")
  try:
    opencl = _dist_file("intel-opencl-rt", "/libintelocl.so")
  except Unavailable:
    opencl = None  # a oneDNN build with a native CPU runtime needs none
  return header.parents[2], library.parent, opencl


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXCNN_CACHE_DIR", pathlib.Path.home() / ".cache" / "jaxcnn"))


def _compile_command(cxx, output, include_dir, lib_dir):
  # --disable-new-dtags writes an RPATH (not RUNPATH), which the loader also uses for libdnnl's
  # own dependencies (libtbb, libsycl, ...) that sit beside it in the same lib directory.
  return [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", *map(str, _SOURCES), "-o", str(output),
          f"-I{jax.ffi.include_dir()}", f"-I{include_dir}", f"-L{lib_dir}", "-ldnnl",
          f"-Wl,--disable-new-dtags,-rpath,{lib_dir}"]


def build(include_dir, lib_dir) -> pathlib.Path:
  """Compiles the extension (once per source/jaxlib/oneDNN) and returns the library path."""
  cxx = os.environ.get("CXX", "g++")
  for source in (*_SOURCES, _HEADER):
    if not source.exists():  # e.g. a wheel built without package data
      raise Unavailable(f"the extension source {source} is missing")
  stamp = "|".join([s.read_text() for s in (*_SOURCES, _HEADER)] + [jax.ffi.include_dir(), str(include_dir), str(lib_dir), cxx,
                    importlib.metadata.version("jaxlib"), importlib.metadata.version("onednn")])
  target = _cache_dir() / f"onednn_conv_{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build under a temporary name and rename: concurrent processes never load a half-written file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  try:
    result = subprocess.run(_compile_command(cxx, tmp, include_dir, lib_dir), capture_output=True, text=True)
    if result.returncode != 0:
      raise Unavailable(f"compiling {', '.join(s.name for s in _SOURCES)} failed: {result.stderr.strip()[-800:]}")
    os.replace(tmp, target)
  except FileNotFoundError as e:
    raise Unavailable(f"no C++ compiler '{cxx}'") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


def _point_opencl_at(opencl: Optional[pathlib.Path]):
  """Lets the OpenCL loader find the CPU runtime that the SYCL build of oneDNN runs on."""
  if opencl is None:
    return
  current = [p for p in os.environ.get("OCL_ICD_FILENAMES", "").split(":") if p]
  if str(opencl) not in current:
    os.environ["OCL_ICD_FILENAMES"] = ":".join(current + [str(opencl)])


def _load():
  include_dir, lib_dir, opencl = _paths()
  path = build(include_dir, lib_dir)
  _point_opencl_at(opencl)
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as e:
    raise Unavailable(f"loading {path} failed: {e}") from e
  if lib.jaxcnn_onednn_probe() != 1:
    raise Unavailable("oneDNN could not create a CPU engine")
  for symbol in _TARGETS:
    jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def available() -> bool:
  """True once the extension is built, loaded and registered; False (logged once) if it cannot be."""
  try:
    _load()
    return True
  except Unavailable as e:
    _log.warning("jaxcnn: oneDNN convolutions unavailable, using the XLA formulation: %s", e)
    return False


# ----------------------------------------------------------------------------- the convolution

def supports(x, w, pads: Pads, groups=1, preferred_element_type=None) -> bool:
  """Operands `conv` takes: float32 NHWC/HWIO of matching channels, non-negative padding.

  Anything else (including inconsistent shapes, which `lax` reports) stays with the caller.
  """
  f32 = jnp.dtype(jnp.float32)
  return (x.ndim == 4 and w.ndim == 4 and x.dtype == f32 and w.dtype == f32
          and (preferred_element_type is None or jnp.dtype(preferred_element_type) == f32)
          and x.shape[3] == w.shape[2] * groups and w.shape[3] % groups == 0
          and all(p >= 0 for pair in pads for p in pair))


def _output_shape(x_shape, w_shape, strides, pads, dilation):
  n, h, wd, _ = x_shape
  kh, kw, _, cout = w_shape
  size = lambda i, k, s, p, d: (i + p[0] + p[1] - (k - 1) * d - 1) // s + 1
  return (n, size(h, kh, strides[0], pads[0], dilation[0]), size(wd, kw, strides[1], pads[1], dilation[1]), cout)


def _call(name, result_shape, a, b, strides, pads, dilation, groups):
  attrs = dict(strides=np.asarray(strides, np.int64), pads_low=np.asarray([p[0] for p in pads], np.int64),
               pads_high=np.asarray([p[1] for p in pads], np.int64),
               dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))
  out = jax.ShapeDtypeStruct(result_shape, jnp.float32)
  return jax.ffi.ffi_call(f"jaxcnn_onednn_conv_{name}", out, vmap_method="sequential")(a, b, **attrs)


def forward(x, w, strides, pads: Pads, dilation, groups):
  """The convolution's output (oneDNN forward primitive); no autodiff rule of its own."""
  return _call("fwd", _output_shape(x.shape, w.shape, strides, pads, dilation), x, w, strides, pads,
               dilation, groups)


def input_grad(dy, w, x_shape, strides, pads: Pads, dilation, groups):
  """d conv / dx contracted with `dy` (oneDNN backward-data primitive)."""
  return _call("bwd_data", tuple(x_shape), dy.astype(jnp.float32), w, strides, pads, dilation, groups)


def kernel_grad(x, dy, w_shape, strides, pads: Pads, dilation, groups):
  """d conv / dw contracted with `dy`, HWIO (oneDNN backward-weights primitive)."""
  return _call("bwd_weights", tuple(w_shape), x, dy.astype(jnp.float32), strides, pads, dilation, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x, w, strides, pads: Pads, dilation, groups):
  """NHWC x HWIO float32 convolution with explicit (low, high) padding, on oneDNN.

  `dilation` is the kernel dilation (1 = dense), `groups` lax's
  `feature_group_count`. Callers check `available()` and `supports()` first.
  """
  return forward(x, w, strides, pads, dilation, groups)


def _conv_fwd(x, w, strides, pads, dilation, groups):
  return forward(x, w, strides, pads, dilation, groups), (x, w)


def _conv_bwd(strides, pads, dilation, groups, res, dy):
  x, w = res
  return (input_grad(dy, w, x.shape, strides, pads, dilation, groups),
          kernel_grad(x, dy, w.shape, strides, pads, dilation, groups))


conv.defvjp(_conv_fwd, _conv_bwd)


# ----------------------------------------------------------------------------- attention

def supports_attention(qkv) -> bool:
  """Operands `attention` takes: float32 [S, N, 3, H, d]."""
  return qkv.ndim == 5 and qkv.shape[2] == 3 and qkv.dtype == jnp.dtype(jnp.float32)


def _attention_forward(qkv, scale):
  s, n, _, h, d = qkv.shape
  out = (jax.ShapeDtypeStruct((s, n, h, d), jnp.float32), jax.ShapeDtypeStruct((s, h, n, n), jnp.float32))
  return jax.ffi.ffi_call("jaxcnn_onednn_attention_fwd", out, vmap_method="sequential")(
      qkv, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def attention(qkv, scale: float):
  """softmax(scale q k^T) v per head; qkv float32 [S, N, 3, H, d] -> [S, N, H, d].

  q, k, v are `qkv[:, :, 0]`, `[:, :, 1]`, `[:, :, 2]` (timm's split of the
  fused projection). Callers check `available()` and `supports_attention()`.
  """
  return _attention_forward(qkv, scale)[0]


def _attention_fwd(qkv, scale):
  out, probs = _attention_forward(qkv, scale)
  return out, (qkv, probs)


def _attention_bwd(scale, res, dout):
  qkv, probs = res
  grad = jax.ffi.ffi_call("jaxcnn_onednn_attention_bwd", jax.ShapeDtypeStruct(qkv.shape, jnp.float32),
                          vmap_method="sequential")(qkv, probs, dout.astype(jnp.float32), scale=np.float32(scale))
  return (grad,)


attention.defvjp(_attention_fwd, _attention_bwd)
