"""hwbcnet: hardware-aware channel-width search (BCNet/BCNetV2) with latency LUTs and ONNX/TensorRT export.

Data flow (one package per stage, imports point one way):
    space (models, traced width variables) -> supernet (slicing principles) -> training
    -> search  <- costs (FLOPs/params, latency LUT built by hardware/) -> export
"""

__version__ = "0.1.0"
