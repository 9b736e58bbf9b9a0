"""Verbs that put a model behind a server: ``package`` (a Triton model repository) and ``serve``
(Triton Inference Server via PyTriton, or the shipped tritonserver on a packaged repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import console, out, set_torch_threads, write_json


def package(triton: Path = typer.Option(..., "--triton", metavar="OUT_REPO",
                                        help="Model repository folder; the model goes to OUT_REPO/NAME/ (config.pbtxt + 1/...)."),
            onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported ONNX (whole graph, --batch dynamic). With tensorrt_plan: the ONNX the plan was built from, for its dims."),
            engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT plan (tensorrt_plan only; full TensorRT, no plugin)."),
            platform: str = typer.Option(..., help="onnxruntime (Triton's ORT backend, model.onnx) | tensorrt_plan (model.plan) | python (Python backend around our ONNX runner)."),
            max_batch: int = typer.Option(8, help="max_batch_size: the largest batch the dynamic batcher forms."),
            instances: int = typer.Option(1, help="Model instances (instance_group count), each runs batches in parallel."),
            device: str = typer.Option("auto", help="auto|cpu|gpu: instance_group kind (auto = GPU when the server has one)."),
            queue_delay_us: int = typer.Option(500, help="Dynamic batcher: longest wait for more requests before running a batch (µs)."),
            threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per instance (default: ORT's choice)."),
            ort_tensorrt: bool = typer.Option(False, "--ort-tensorrt", help="onnxruntime: let Triton build TensorRT engines on its GPU through ORT's TensorRT accelerator."),
            trt_precision: str = typer.Option("auto", help="--ort-tensorrt precision: auto (int8 for a Q/DQ ONNX, else fp16) | fp32 | fp16 | int8 (Q/DQ ONNX only)."),
            name: str = typer.Option("m2s2l", help="Model name in the repository (clients ask for it)."),
            force: bool = typer.Option(False, "--force", help="Replace OUT_REPO/NAME if it exists."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write what was packaged as JSON.")):
    """Write a Triton Inference Server model repository for an exported model.

    The config (dims from the ONNX, dynamic batching, instance groups, the input contract as
    parameters) is parsed back with Triton's own schema before the folder is moved into place.
    """
    from ..serving.repository import package_repository

    result = package_repository(triton, platform, onnx=onnx, engine=engine, name=name, max_batch=max_batch,
                                instances=instances, device=device, queue_delay_us=queue_delay_us, threads=threads,
                                ort_tensorrt=ort_tensorrt, trt_precision=trt_precision, force=force)
    out.print(f"wrote {result.model_dir} ({platform}; max batch {max_batch}, {instances} instance(s)): "
              + ", ".join(result.files[:4]) + (" ..." if len(result.files) > 4 else ""))
    for note in result.notes:
        console.print(f"note: {note}")
    write_json(json_out, result.to_dict())


def _serve_repository(repository: Path, endpoints, log_verbose: int):
    """The shipped tritonserver on a packaged repository (it has the Python backend only)."""
    from ..serving.process import TritonServerProcess
    from ..serving.repository import read_config

    for cfg_path in sorted(Path(repository).glob("*/config.pbtxt")):
        cfg = read_config(cfg_path)
        if cfg.backend != "python":
            kind = cfg.platform or cfg.backend or "unknown"
            raise UserError(f"{cfg_path.parent.name} is a '{kind}' model; the tritonserver shipped with nvidia-pytriton "
                            "has only the Python backend: serve it with NVIDIA's Triton container (docs/serving.md)")
    return TritonServerProcess(repository, endpoints, log_verbose=log_verbose)


def serve(checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run folder from `train` (served with the PyTorch runner)."),
          onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported whole-graph ONNX (served with the ONNX Runtime runner)."),
          repository: Optional[Path] = typer.Option(None, "--repository", help="Instead: a repository from `package --platform python`, served by the tritonserver binary nvidia-pytriton ships."),
          host: str = typer.Option("127.0.0.1", help="Address HTTP, gRPC and metrics bind to. Default loopback only; 0.0.0.0 exposes the server to the network."),
          port: int = typer.Option(8000, help="HTTP port (0 = free ports chosen now for all three)."),
          grpc_port: Optional[int] = typer.Option(None, help="gRPC port (default: --port + 1)."),
          metrics_port: Optional[int] = typer.Option(None, help="Prometheus metrics port (default: --port + 2)."),
          max_batch: int = typer.Option(8, help="Largest batch the dynamic batcher forms."),
          instances: int = typer.Option(1, help="Model instances (each with its own runner)."),
          queue_delay_us: int = typer.Option(500, help="Dynamic batcher: longest wait for more requests (µs)."),
          threads: Optional[int] = typer.Option(None, help="CPU threads: ONNX Runtime intra-op threads per instance, or PyTorch threads of the process (default: the runtime's choice)."),
          log_verbose: int = typer.Option(0, help="tritonserver --log-verbose level."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Once ready, write the endpoints and listening sockets as JSON.")):
    """Run a Triton Inference Server with the model, dynamic batching, health and metrics, until Ctrl-C.

    Clients: gRPC (tritonclient) on --grpc-port, HTTP/REST on --port (health: /v2/health/ready),
    Prometheus metrics on --metrics-port (/metrics). The model config carries the input contract, so
    `m2s2l-deploy bench VIDEO --server grpc://HOST:PORT` prepares frames exactly as the model expects.
    """
    from ..serving.network import Endpoints
    from ..serving.procfs import listening_addresses
    from ..serving.server import PyTritonServer, served_model

    given = sum(x is not None for x in (checkpoint, onnx, repository))
    if given != 1:
        raise UserError("give exactly one of --checkpoint RUN_DIR, --onnx FILE or --repository DIR")
    if port == 0:
        if grpc_port or metrics_port:
            raise UserError("--port 0 chooses all three ports; do not combine it with --grpc-port/--metrics-port")
        endpoints = Endpoints.choose(host)
    else:
        endpoints = Endpoints.choose(host, port, grpc_port or port + 1, metrics_port or port + 2)
    if host not in ("127.0.0.1", "localhost"):
        console.print(f"warning: binding to {host}: the server is reachable from other machines (no authentication)")
    if repository is not None:
        server = _serve_repository(repository, endpoints, log_verbose)
    else:
        if checkpoint is not None:
            set_torch_threads(threads)
        server = PyTritonServer(served_model(checkpoint, onnx, threads), endpoints, max_batch=max_batch,
                                instances=instances, queue_delay_us=queue_delay_us, log_verbose=log_verbose)
    server.start()
    try:
        pids = [server.pid] if repository is not None else server.pids()
        listening = sorted({a for p in pids for a in listening_addresses(p)})
        e = endpoints
        out.print(f"serving on {e.host}: HTTP {e.http_url}  gRPC {e.grpc_url}  metrics {e.metrics_url}  "
                  f"health {e.health_url}")
        out.print("listening: " + ", ".join(f"{a}:{p}" for a, p in listening))
        write_json(json_out, {"http_url": e.http_url, "grpc_url": e.grpc_url, "metrics_url": e.metrics_url,
                               "health_url": e.health_url, "server_pids": pids,
                               "listening": [[a, p] for a, p in listening]})
        if repository is not None:
            _wait_process(server)
        else:
            server.serve_forever()
    finally:
        server.close()
    out.print("server stopped")


def _wait_process(server) -> None:
    """Block until Ctrl-C / SIGTERM or until tritonserver exits by itself."""
    from ..serving.process import wait_for_signal

    if not wait_for_signal(server.running):
        console.print(f"tritonserver exited; log {server.log_path}:\n{server.log_tail()}")
