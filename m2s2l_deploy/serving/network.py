"""Ports, addresses and health checks of a Triton server: loopback unless the user says otherwise.

PyTriton and tritonserver bind every interface unless told otherwise; ``Endpoints`` carries the
host and the three ports (HTTP, gRPC, metrics) every start is given explicitly.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import UserError

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_host(host: str) -> None:
    try:
        socket.inet_aton(host)
    except OSError:
        raise UserError(f"--host must be an IPv4 address such as 127.0.0.1, got '{host}'") from None


def _check_port(port: int | None, what: str) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"{what} must be between 1 and 65535, got {port}")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"{self.http_url}/v2/health/ready"

    @classmethod
    def choose(cls, host: str = LOOPBACK, http_port: int | None = None, grpc_port: int | None = None,
               metrics_port: int | None = None) -> "Endpoints":
        """Given ports, and free ones (chosen now) for the rest."""
        _check_host(host)
        for p, what in ((http_port, "--port"), (grpc_port, "--grpc-port"), (metrics_port, "--metrics-port")):
            _check_port(p, what)
        probe = host if host != "0.0.0.0" else LOOPBACK
        ports = [p or free_port(probe) for p in (http_port, grpc_port, metrics_port)]
        if len(set(ports)) != 3:
            raise UserError(f"HTTP, gRPC and metrics need three different ports, got {ports}")
        return cls(host, *ports)
