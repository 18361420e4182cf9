"""Latency on real hardware: device profiles, timing backends (ONNX Runtime, TensorRT), LUT cells and files,
the LUT profiler, and end-to-end calibration/validation of the LUT predictor."""
