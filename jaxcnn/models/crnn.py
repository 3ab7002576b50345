"""CRNN (Shi, Bai & Yao 2015, "An End-to-End Trainable Neural Network for Image-based Sequence Recognition").

Grey word images [B, 32, W, 1] -> per-column class logits [B, T, num_classes + 1] (class 0 is CTC's
blank, class c + 1 the alphabet's c-th character; see `jaxcnn.tasks.sequence`).

Convolutional layers (the paper's Table 1, bottom to top; ReLU after every convolution):
  conv1 64 3x3/1 p1,  max-pool 2x2/2
  conv2 128 3x3/1 p1, max-pool 2x2/2
  conv3 256 3x3/1 p1, conv4 256 3x3/1 p1, max-pool window 2x2, stride (2, 1), padding (0, 1)
  conv5 512 3x3/1 p1, BN, conv6 512 3x3/1 p1, BN, max-pool 2x2, stride (2, 1), padding (0, 1)
  conv7 512 2x2/1 p0
The paper's "1x2" pools halve the height only; their exact window, stride and padding are the authors'
code's (bgshih/crnn, and meijieru/crnn.pytorch `MaxPool2d((2, 2), (2, 1), (0, 1))`). Height 32 becomes 1,
width W becomes T = W // 4 + 1 columns (100 -> 26, 128 -> 33): `output_length(W)`. The paper's Table 1
has batch normalisation after conv5 and conv6 (`batch_norm_layers=(5, 6)`); the PyTorch port puts it after
conv3, conv5 and conv7 instead, selectable as (3, 5, 7).

Map-to-sequence: the 1 x T x 512 map is read column by column, left to right: [B, T, 512].
Recurrent layers: two bidirectional LSTMs of 256 units per direction, each followed, as in the authors'
code (`BidirectionalLSTM`: LSTM then Linear over the concatenated directions), by a linear layer: the
first maps 512 -> 256, the second is the per-column classifier 512 -> num_classes + 1. With the 36
characters 0-9a-z (37 classes with the blank) and 1-channel input `crnn` has 8,326,693 parameters (the
paper: 8.3M; flax's LSTM keeps one bias per gate where PyTorch keeps two). The LSTMs are `jaxcnn.layers.LSTM` (flax cells; a torch.nn.LSTM converts with
`jaxcnn.convert.recurrent`).

Registered: `crnn` (the paper's sizes, 36 characters) and `crnn_small` (a narrow version for the
offline `digit_strings`: widths 32-128, 96 LSTM units, 10 characters, 824,235 parameters, and batch norm
after every convolution: with the paper's two BN layers it leaves CTC's initial plateau later, which a
5-minute CPU budget cannot afford). `seq_lengths` of the LSTM is
not used: every column of a (stretched) word image is valid, as in the paper.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import LSTM, Conv, max_pool
from jaxcnn.registry import register_model

PAPER_WIDTHS = (64, 128, 256, 256, 512, 512, 512)


def output_length(width: int) -> int:
  """Columns T the CNN gives for an input `width` (2x2/2, 2x2/2, then two (2, 1)-strided pools padded by 1
  in width, then a 2x2 valid convolution)."""
  # W // 4 after the two 2x2/2 pools; each padded (2, 1)-strided pool adds 1 ((w + 2 - 2) // 1 + 1), the
  # 2x2 valid convolution takes 1 away.
  return width // 4 + 1


class CRNN(nn.Module):
  """CNN (7 convolutions) -> columns -> bidirectional LSTMs -> per-column logits (see the module doc)."""
  num_classes: int = 36                    # characters; the model adds the blank
  widths: Sequence[int] = PAPER_WIDTHS     # conv1..conv7 output channels
  hidden_size: int = 256                   # LSTM units per direction
  num_lstm_layers: int = 2
  batch_norm_layers: Sequence[int] = (5, 6)  # convolutions (1..7) followed by batch norm
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if len(self.widths) != 7 or any(int(w) < 1 for w in self.widths):
      raise UserError(f"crnn widths={tuple(self.widths)} must be 7 positive channel counts, e.g. {PAPER_WIDTHS}")
    if any(b not in range(1, 8) for b in self.batch_norm_layers):
      raise UserError(f"crnn batch_norm_layers={tuple(self.batch_norm_layers)} must name convolutions among 1..7")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[1] != 32 or x.shape[2] < 8:
      raise UserError(f"crnn needs images [batch, 32, W >= 8, channels] (height 32, as the paper), got "
                      f"shape {tuple(x.shape)}: set data.image_size=(32, W)")
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths, start=1):
      size, pad = ((2, 2), 0) if i == 7 else ((3, 3), 1)
      x = Conv(width, size, padding=pad, dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{i}")(x)
      if i in self.batch_norm_layers:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name,
                         dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
      if i in (1, 2):
        x = max_pool(x, 2, 2)
      elif i in (4, 6):
        x = max_pool(x, 2, (2, 1), (0, 1))
    x = x[:, 0]   # [B, 1, T, C] -> [B, T, C]: the columns, left to right
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    for layer in range(self.num_lstm_layers):
      x, _ = LSTM(self.hidden_size, bidirectional=True, dtype=self.dtype, param_dtype=self.param_dtype,
                  name=f"lstm{layer + 1}")(x)
      last = layer == self.num_lstm_layers - 1
      x = dense(self.num_classes + 1 if last else self.hidden_size, name="classifier" if last else
                f"embed{layer + 1}")(x)
    return x


register_model("crnn")(CRNN)
register_model("crnn_small", num_classes=10, widths=(32, 64, 96, 96, 128, 128, 128), hidden_size=96,
               batch_norm_layers=(1, 2, 3, 4, 5, 6, 7))(CRNN)
