"""A pymodbus TCP server on a thread of its own, for the simulators that serve registers (PCS, twin meters).

pymodbus builds its server inside a running asyncio loop; each simulator needs that loop on a daemon
thread, to know at ``start()`` that the port is listening (or why not), and to stop it from any thread.
``device`` builds the ``SimDevice`` inside the loop; ``on_listening(server)`` runs there once it listens
(the PCS simulator binds its register image to the server's block then).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable


class ModbusThread:
    def __init__(self, device: Callable[[], object], host: str, port: int, what: str, name: str,
                 on_listening: Callable[[object], None] | None = None):
        """``what`` names the server in errors, ``name`` its thread."""
        self.device, self.host, self.port, self.what, self.name = device, host, port, what, name
        self.on_listening = on_listening
        self.server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> "ModbusThread":
        """Serve; returns once listening, raises ``RuntimeError`` with the cause when it cannot."""
        from pymodbus.server import ModbusTcpServer

        ready, failure = threading.Event(), []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def listen():
                self.server = ModbusTcpServer(self.device(), address=(self.host, self.port))
                await self.server.serve_forever(background=True)

            try:
                loop.run_until_complete(listen())
                if self.on_listening is not None:
                    self.on_listening(self.server)
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or failure:
            raise RuntimeError(f"{self.what} did not start on {self.host}:{self.port}: "
                               f"{failure[0] if failure else 'timeout'}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
