"""Producing deployable artefacts: ONNX export (fp32/fp16), INT8 Q/DQ, TensorRT engines."""
