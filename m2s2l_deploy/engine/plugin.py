"""The selective-scan TensorRT plugin: a Python IPluginV3 for ``ai.onnx.contrib::SelectiveScan``.

The exporter's ``--scan plugin`` node (export/scan_graph.py) carries ``plugin_namespace="m2s2l"``,
``plugin_version="1"`` and the parameter ``delta_softplus``; its inputs are
``u, delta (b, d, L); A (d, n); B, C (b, g, n, L); D, delta_bias (d,)`` and its output
``y (b, d, L)``, all float32. TensorRT's ONNX parser looks the creator up by
(op_type, plugin_version, plugin_namespace) and hands it the attributes named in the creator's
``field_names``: here only ``delta_softplus``.

Lifecycle, as TensorRT drives it:
- build (runs on a CPU-only machine with TensorRT-RTX, so it is tested in CI):
  ``create_plugin(phase=BUILD)`` -> ``get_output_data_types`` / ``get_output_shapes`` ->
  ``supports_format_combination`` -> ``configure_plugin`` -> ``get_fields_to_serialize`` (the plan
  stores the plugin's name/version/namespace and these fields only);
- runtime (needs a GPU): ``create_plugin(phase=RUNTIME)`` from the stored fields ->
  ``attach_to_context`` -> ``on_shape_change`` -> ``enqueue``.
Any process that builds or deserialises such a plan must call ``register_plugin`` first (the
builder and ``TensorRTRunner`` do).

``enqueue`` maps TensorRT's raw device pointers onto torch tensors without copying
(``tensor_at``: a ``__cuda_array_interface__`` view for CUDA memory, a ctypes buffer for host
memory) and calls one plain function, ``m2s2l_deploy.ops.launch.selective_scan_launch``
(OpenAI-Triton kernel on CUDA, torch form on CPU), on TensorRT's stream, writing into the output
buffer. The classes derive from the backend module's own base classes, so they are made per
module by ``plugin_classes(trt)``.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from ..export.scan_graph import INPUTS, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION

PLUGIN_NAME = OP_TYPE
FIELDS = ("delta_softplus",)

_CLASSES: dict[int, tuple[type, type]] = {}
_CREATORS: dict[int, object] = {}


# -- raw pointers -> torch tensors ----------------------------------------------------------------
class _CudaArray:
    """Just enough of ``__cuda_array_interface__`` (v3) for ``torch.as_tensor`` to wrap a pointer."""

    def __init__(self, ptr: int, shape, typestr: str):
        self.__cuda_array_interface__ = {"shape": tuple(int(s) for s in shape), "typestr": typestr,
                                         "data": (int(ptr), False), "version": 3, "strides": None}


_TYPESTR = {"float32": "<f4", "float16": "<f2", "int32": "<i4", "int64": "<i8"}


def tensor_at(ptr: int, shape, dtype, device: str = "cuda"):
    """A torch tensor viewing ``ptr`` (contiguous ``shape`` of ``dtype``), no copy.

    ``device="cuda"``: device memory through ``__cuda_array_interface__``; ``"cpu"``: host memory
    through a ctypes buffer (how the tests drive ``enqueue`` without a GPU).
    """
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape)) if shape else 1
    if device == "cpu":
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        buf = (ctypes.c_byte * nbytes).from_address(int(ptr))
        return torch.frombuffer(buf, dtype=dtype).view(shape)
    name = str(dtype).replace("torch.", "")
    return torch.as_tensor(_CudaArray(ptr, shape, _TYPESTR[name]), device=device)


@contextmanager
def _on_stream(stream: int, device: str):
    """Run torch/Triton work on TensorRT's CUDA stream (no-op for host memory)."""
    if device == "cpu":
        yield
        return
    import torch
    with torch.cuda.stream(torch.cuda.ExternalStream(int(stream))):
        yield


def _torch_dtype(trt: ModuleType, dtype) -> str:
    return {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16",
            trt.DataType.INT32: "int32", trt.DataType.INT64: "int64"}[dtype]


def _launch():
    """The plain launch function (imported lazily: OpenAI Triton / CUDA only when enqueue runs)."""
    from ..ops.launch import selective_scan_launch
    return selective_scan_launch


def run_scan(tensors: dict, y, delta_softplus: bool):
    """Map the node's named inputs onto ``selective_scan_launch`` (z is not used by the model)."""
    return _launch()(tensors["u"], tensors["delta"], tensors["A"], tensors["B"], tensors["C"],
                     D=tensors["D"], z=None, delta_bias=tensors["delta_bias"],
                     delta_softplus=bool(delta_softplus), out=y)


# -- fields ---------------------------------------------------------------------------------------
def fields_to_dict(fc) -> dict:
    """A PluginFieldCollection (or list of PluginField) -> {name: int} for our scalar int fields."""
    out = {}
    for f in fc:
        data = np.asarray(f.data).reshape(-1)
        if f.name in FIELDS and data.size:
            out[f.name] = int(data[0])
    return out


def _field_collection(trt: ModuleType, values: dict):
    return trt.PluginFieldCollection([trt.PluginField(name, np.array([int(values[name])], dtype=np.int32),
                                                      trt.PluginFieldType.INT32) for name in FIELDS])


# -- classes per backend module -------------------------------------------------------------------
def plugin_classes(trt: ModuleType) -> tuple[type, type]:
    """(SelectiveScanPlugin, SelectiveScanCreator) deriving from ``trt``'s plugin interfaces."""
    key = id(trt)
    if key in _CLASSES:
        return _CLASSES[key]

    class SelectiveScanPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """One SelectiveScan layer; its only state is ``delta_softplus`` (and the device it runs on)."""

        def __init__(self, delta_softplus: bool = False, phase=None, device: str = "cuda"):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.num_outputs = 1
            self.timing_cache_id = ""
            self.delta_softplus = bool(delta_softplus)
            self.phase = phase
            self.device = device

        # core
        def get_capability_interface(self, capability_type):
            return self

        def clone(self):
            return SelectiveScanPlugin(self.delta_softplus, self.phase, self.device)

        # build
        def get_output_data_types(self, input_types):
            return [input_types[0]]                                  # y takes u's type (float32)

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0])]                        # y: (b, d, L) like u

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            return desc.format == trt.TensorFormat.LINEAR and desc.type == trt.DataType.FLOAT

        def configure_plugin(self, inputs, outputs):
            if len(inputs) != len(INPUTS):
                raise ValueError(f"SelectiveScan takes {len(INPUTS)} inputs, got {len(inputs)}")

        def get_workspace_size(self, inputs, outputs):
            return 0

        def get_valid_tactics(self):
            return []

        def get_fields_to_serialize(self):
            return _field_collection(trt, {"delta_softplus": int(self.delta_softplus)})

        # runtime
        def set_tactic(self, tactic):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            tensors = {name: tensor_at(ptr, desc.dims, _torch_dtype(trt, desc.type), self.device)
                       for name, ptr, desc in zip(INPUTS, inputs, input_desc)}
            y = tensor_at(outputs[0], output_desc[0].dims, _torch_dtype(trt, output_desc[0].type), self.device)
            with _on_stream(stream, self.device):
                run_scan(tensors, y, self.delta_softplus)
            return 0

    class SelectiveScanCreator(trt.IPluginCreatorV3One):
        """Makes SelectiveScanPlugin from the parser's attributes or a plan's stored fields.

        ``created`` keeps every plugin made (TensorRT holds raw references to Python plugins;
        keeping them alive here is also what lets tests inspect a real build).
        """

        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32) for name in FIELDS])
            self.created: list[tuple[str, dict, object, object]] = []   # (layer name, fields, phase, plugin)

        def create_plugin(self, name, fc, phase):
            fields = fields_to_dict(fc)
            plugin = SelectiveScanPlugin(bool(fields.get("delta_softplus", 0)), phase)
            self.created.append((name, fields, phase, plugin))
            return plugin

    _CLASSES[key] = (SelectiveScanPlugin, SelectiveScanCreator)
    return _CLASSES[key]


def register_plugin(trt: ModuleType):
    """Register the creator with ``trt``'s plugin registry (once per module); returns the creator.

    Must run before parsing an ONNX with SelectiveScan nodes and before deserialising a plan that
    holds them: the plan stores only name/version/namespace/fields.
    """
    key = id(trt)
    if key in _CREATORS:
        return _CREATORS[key]
    _, creator_cls = plugin_classes(trt)
    creator = creator_cls()
    registry = trt.get_plugin_registry()
    if not registry.register_creator(creator, PLUGIN_NAMESPACE):
        existing = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        if existing is None:
            raise RuntimeError("TensorRT refused to register the SelectiveScan plugin creator")
        creator = existing
    _CREATORS[key] = creator
    return creator


def plugin_descriptor() -> dict:
    """How the sidecar names the plugin a plan needs."""
    return {"name": PLUGIN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION,
            "fields": list(FIELDS), "module": __name__}


__all__ = ["plugin_classes", "register_plugin", "tensor_at", "run_scan", "fields_to_dict", "plugin_descriptor",
           "PLUGIN_NAME"]
