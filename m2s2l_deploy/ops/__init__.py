"""The selective scan in every form (``scan``), its compiled kernels (``kernels/``) and the one
launch function the TensorRT plugin calls (``launch``). Imports nothing of the package but
``errors``: the model and the exporters build on it, never the other way round."""
