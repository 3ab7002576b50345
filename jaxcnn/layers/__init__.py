"""Shared building blocks. Models take their convolutions from here, never from `nn.Conv`."""
from jaxcnn.layers.conv import Conv, ConvTranspose, conv_general_dilated

__all__ = ["Conv", "ConvTranspose", "conv_general_dilated"]
