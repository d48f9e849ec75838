"""A small HTTP/1.1 webhook receiver for benchmarks, run in its own process.

It answers every request ``204`` on kept-alive connections (after ``delay``
seconds, to stand in for a remote provider) and notes each ``webhook-id``, at a small fraction of the CPU a threaded ``http.server``
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

    def __init__(self, received: list[str], delay: float = 0.0) -> None:
        self.received = received
        self.delay = delay
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
            answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
            if self.delay:
                # Clients send one request at a time per connection: answers stay in order.
                asyncio.get_running_loop().call_later(self.delay, self.transport.write, answer)
            else:
                self.transport.write(answer)


def run_sink(port_file: Path, ids_file: Path, delay: float = 0.0) -> None:
    received: list[str] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(received, delay), "127.0.0.1", 0, backlog=1024)
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await stopped.wait()
        ids_file.write_text("\n".join(received))

    asyncio.run(serve())



def start_sink(directory: Path, delay: float = 0.0) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start a sink process; returns it, its URL and the file its received ids go to on SIGTERM.

    Args:
        directory: where the sink notes its port and the ids it received.
        delay: seconds it waits before each answer (a remote provider's latency).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port_file, ids_file = directory / "port", directory / "ids"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, str(port_file), str(ids_file), str(delay)])
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/hook", ids_file


if __name__ == "__main__":
    run_sink(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
