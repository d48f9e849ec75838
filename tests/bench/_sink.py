"""A small HTTP/1.1 webhook receiver for benchmarks, run in its own process.

It answers every request ``204`` on kept-alive connections and notes each
``webhook-id``, at a small fraction of the CPU a threaded ``http.server``
needs, so the receiver takes little of the machine from what is measured.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SinkProtocol", "run_sink", "start_sink"]


class SinkProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: answers each request ``204`` and notes its ``webhook-id``."""

    def __init__(self, received: list[str]) -> None:
        self.received = received
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length, webhook_id = 0, ""
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    webhook_id = value.strip().decode()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.received.append(webhook_id)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def run_sink(port_file: Path, ids_file: Path) -> None:
    received: list[str] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(received), "127.0.0.1", 0, backlog=512)
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await stopped.wait()
        ids_file.write_text("\n".join(received))

    asyncio.run(serve())



def start_sink(directory: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start a sink process; returns it, its URL and the file its received ids go to on SIGTERM."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file, ids_file = directory / "port", directory / "ids"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, str(port_file), str(ids_file)])
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/hook", ids_file


if __name__ == "__main__":
    run_sink(Path(sys.argv[1]), Path(sys.argv[2]))
