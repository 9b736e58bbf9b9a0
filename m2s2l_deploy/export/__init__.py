"""PyTorch model -> ONNX. ``exporter`` traces a checkpoint (needs torch); ``scan_graph`` builds the
selective scan as ONNX graph pieces with onnx + numpy only, so the engine builder and the ONNX
Runtime runner can read the SelectiveScan node's definition without importing torch."""
