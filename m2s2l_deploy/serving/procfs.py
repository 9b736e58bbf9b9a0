"""What /proc says about a server process: the sockets it listens on, its children, its name.

``serve`` reports what the server process really listens on (read back from ``/proc/net/tcp*``,
not what it was asked to bind), so a user sees at once whether it is reachable from outside.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def _hex_to_ipv4(h: str) -> str:
    return socket.inet_ntoa(bytes.fromhex(h)[::-1])


def _hex_to_ipv6(h: str) -> str:
    raw = bytes.fromhex(h)
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process ``pid`` (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = []
    for table, conv in (("/proc/net/tcp", _hex_to_ipv4), ("/proc/net/tcp6", _hex_to_ipv6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    found.append((conv(addr), int(port, 16)))
    return sorted(found)


# -- readiness -----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(entry))
    return out


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""
