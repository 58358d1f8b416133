"""Everything that speaks Triton: its model configs (``config``), the one client (``client``), and
an ensemble run locally on onnxruntime (``onnx_ensemble``) to check what Triton will serve."""
