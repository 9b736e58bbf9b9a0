"""Triton Python-backend model: M2S2L through m2s2l-deploy's ONNX runner.

`m2s2l-deploy package --platform python` copies this file to ``<repo>/<name>/1/model.py`` beside
``model.onnx`` and ``m2s2l_runtime/`` (the runner, vendored). It runs inside Triton's Python stub,
never inside this package: ``triton_python_backend_utils`` exists only there.

Dynamic batching hands ``execute`` several requests at once; their clips are concatenated into one
runner call and the outputs split back per request. A request that cannot be run (wrong shape, dtype,
non-finite values) gets its own error response; the others in the batch are still answered.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from m2s2l_runtime.runners.onnx_runner import OnnxRunner  # noqa: E402  (vendored next to this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads") or 0) or None
        gpu = args.get("model_instance_kind") == "GPU"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.runner = OnnxRunner(os.path.join(HERE, params.get("onnx_file", "model.onnx")),
                                 providers=providers, threads=threads)
        clip = config["input"][0]
        self.input_name = clip["name"]
        self.sample_shape = tuple(int(d) for d in clip["dims"])
        self.output_names = [o["name"] for o in config["output"]]

    def _clip(self, request):
        """The request's clips (b, T, C, H, W) float32, or an error message."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return None, f"input '{self.input_name}' is missing"
        x = tensor.as_numpy()
        if x.dtype != np.float32:
            return None, f"input '{self.input_name}' must be FP32, got {x.dtype}"
        if x.ndim != len(self.sample_shape) + 1 or tuple(x.shape[1:]) != self.sample_shape:
            return None, f"input '{self.input_name}' must be (batch, {', '.join(map(str, self.sample_shape))}), got {x.shape}"
        if not np.isfinite(x).all():
            return None, f"input '{self.input_name}' holds NaN or infinite values"
        return x, None

    def execute(self, requests):
        responses = [None] * len(requests)
        clips, ok = [], []
        for i, request in enumerate(requests):
            x, err = self._clip(request)
            if err is not None:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(err))
            else:
                clips.append(x)
                ok.append(i)
        if not ok:
            return responses
        try:
            out = self.runner.infer(np.concatenate(clips))
        except Exception as e:  # report to every request of this batch, keep serving
            for i in ok:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"inference failed: {type(e).__name__}: {e}"))
            return responses
        start = 0
        for i, x in zip(ok, clips):
            n = len(x)
            wanted = requests[i].requested_output_names() or self.output_names
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[name][start:start + n]))
                       for name in self.output_names if name in wanted]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += n
        return responses

    def finalize(self):
        self.runner = None
