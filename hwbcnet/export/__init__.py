"""Deployment: ONNX export checked against PyTorch, TensorRT engines (fp32/fp16/INT8 Q/DQ), on-device verification."""

from hwbcnet.export.onnx_export import ExportReport, ExportSource, export_onnx, load_export_source, read_export_metadata
from hwbcnet.export.tensorrt_export import export_tensorrt
from hwbcnet.export.verify import verify

__all__ = ["ExportReport", "ExportSource", "export_onnx", "export_tensorrt", "load_export_source",
           "read_export_metadata", "verify"]
