"""An aiohttp application served on loopback from a thread of the test process, for the
scriptable peers of the tests (tests/vendor.py, tests/forwarder.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web


class LoopbackApp:
    """Subclasses add their routes (routes) and, if they need any, what to open and close
    on the server's own loop (on_start, on_stop); `with` serves it on 127.0.0.1:self.port."""

    port: int

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def on_start(self) -> None:
        pass

    async def on_stop(self) -> None:
        pass

    def __enter__(self) -> Any:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            await self.on_start()
            app = web.Application(client_max_size=128 << 20, handler_args={"auto_decompress": False})
            self.routes(app)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            started.set()

        def run() -> None:
            self._loop.run_until_complete(main())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self.on_stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
