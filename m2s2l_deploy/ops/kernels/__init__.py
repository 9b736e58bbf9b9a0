"""GPU kernels: the OpenAI-Triton selective scan (``scan_triton``) and its one launch function
(``launch.selective_scan_launch``), shared by the PyTorch dispatcher and the TensorRT plugin.

Importing this package imports nothing heavy: ``triton`` is loaded only by ``scan_triton``.
"""
