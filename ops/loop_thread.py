"""A server that lives in an asyncio loop, on a daemon thread of its own.

pymodbus and bacpypes3 build their servers inside a running loop; the simulators (PCS, the twin's
meters and BACnet plant) need that loop on a thread, to know at ``start()`` that the server listens
(or why not), and to stop it from any thread. ``LoopThread`` does that for any server:
``listen()`` (a coroutine function) builds it inside the loop, ``close()`` (one too) shuts it down
there once the loop is asked to stop. ``ModbusThread`` is it for a pymodbus TCP server.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable


class LoopThread:
    def __init__(self, listen: Callable[[], Awaitable[None]], what: str, name: str,
                 close: Callable[[], Awaitable[None]] | None = None):
        """``what`` names the server in errors, ``name`` its thread."""
        self.listen, self.close, self.what, self.name = listen, close, what, name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> "LoopThread":
        """Serve; returns once ``listen()`` is done, raises ``RuntimeError`` with the cause when it fails."""
        ready, failure = threading.Event(), []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self.listen())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            if self.close is not None:
                loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or failure:
            raise RuntimeError(f"{self.what} did not start: {failure[0] if failure else 'timeout'}") \
                from (failure[0] if failure else None)
        return self

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the server's loop (the only thread that may touch the server)."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(callback)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._loop = None


class ModbusThread(LoopThread):
    """A pymodbus TCP server: ``device()`` builds its ``SimDevice`` inside the loop, and ``on_listening(server)``
    runs there once it listens (the PCS simulator binds its register image to the server's block then)."""

    def __init__(self, device: Callable[[], object], host: str, port: int, what: str, name: str,
                 on_listening: Callable[[object], None] | None = None):
        self.device, self.host, self.port, self.on_listening = device, host, port, on_listening
        self.server = None
        super().__init__(self._listen, f"{what} on {host}:{port}", name, close=self._close)

    async def _listen(self) -> None:
        from pymodbus.server import ModbusTcpServer

        self.server = ModbusTcpServer(self.device(), address=(self.host, self.port))
        await self.server.serve_forever(background=True)
        if self.on_listening is not None:
            self.on_listening(self.server)

    async def _close(self) -> None:
        await self.server.shutdown()
