"""Shared building blocks. Models take their convolutions from here, never from `nn.Conv`."""
from jaxcnn.layers.conv import Conv, ConvTranspose, conv_general_dilated

__all__ = ["Conv", "ConvTranspose", "conv_general_dilated"]
from jaxcnn.layers.drop import DropPath
from jaxcnn.layers.norm import LayerNorm, LocalResponseNorm, layer_norm, local_response_norm
from jaxcnn.layers.activations import gelu
from jaxcnn.layers.pool import adaptive_avg_pool, avg_pool, max_pool
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.layers.resize import resize_bilinear, resize_nearest
from jaxcnn.layers.fpn import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from jaxcnn.layers.recurrent import GRU, LSTM, Recurrent, SimpleRNN
