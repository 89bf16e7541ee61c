"""A TCP relay on one loopback port standing in for an edge device's uplink, so a test can cut the
leaf link (every connection reset, new ones refused) and bring it back on the same port. It runs
its own event loop in a thread: the bytes it relays (TLS) never wait on a test's event loop."""
from __future__ import annotations

import asyncio
import threading


class LinkProxy:
    def __init__(self, target_port: int, port: int):
        self.target_port = target_port
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"link-proxy-{port}", daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0

    def start(self) -> "LinkProxy":
        self.thread.start()
        self._call(self._listen())
        return self

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self.writers -= {writer, up_w}

    async def _cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            try:
                w.transport.abort()  # a reset, as a dropped link looks to both ends
            except Exception:
                pass
        self.writers.clear()

    def cut(self) -> None:
        """Drop the link: both ends see their connection reset; reconnects are refused until restore()."""
        self.cuts += 1
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        if self.thread.is_alive():
            try:
                self._call(self._cut())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=5)
