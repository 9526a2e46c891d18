"""asyncio client of the magnet-rt daemon: `AsyncMagnetClient`, the twin of `clients.client.MagnetClient`.

    async with AsyncMagnetClient("tcp://127.0.0.1:5555") as c:
        async for event in c.generate("warm rhodes", duration_s=4):
            ...
        result = await c.generate_audio("dark techno", variations=2)

Same methods, retry and timeout policy as the blocking client (see `clients/client.py`); the calls are
coroutines and streams are async iterators. One reader task routes each incoming message to the mailbox of its
request id, so any number of requests can run at once on one connection. Cancelling the task that iterates a
stream sends `cancel` to the daemon, like Ctrl-C does for the blocking client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Self

import zmq
import zmq.asyncio

import protocol as P

from .client import (
    DEFAULT_TIMEOUT_S,
    AudioAssembler,
    Result,
    StreamState,
    _Base,
    _is_audio,
    build_result,
    new_request_id,
)
from .errors import ClientError, DaemonTimeout, DaemonUnavailable, RequestCancelled, RequestFailed

__all__ = ["AsyncMagnetClient", "AsyncRequestStream"]

log = logging.getLogger("magnet_rt.client")


class AsyncRequestStream(StreamState):
    """Async twin of RequestStream: `async for event in stream`, `async with`, `await stream.aclose()`."""

    def __aiter__(self) -> AsyncRequestStream:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> P.Event:
        c = self.client
        if self.terminal is not None or self._closed:
            raise StopAsyncIteration
        try:
            if self._epoch is None:
                self._epoch = await c._send(self.request, self._data)
            msg = await c._await(self.id, self._epoch, self.request.TYPE, alive=self.accepted is not None)
            if (ping := c._heartbeat_due()) is not None:
                await c._send(ping)
                c._finish(ping.id)
        except (KeyboardInterrupt, asyncio.CancelledError):
            await self.aclose()
            raise
        except ClientError:
            self._lost()
            raise
        return self._received(msg)

    async def aclose(self) -> P.Event | None:
        cancel = self._start_cancel()
        if cancel is None:
            return self.terminal
        c = self.client
        await c._send(cancel, share=self.id)
        deadline = time.monotonic() + c.cancel_timeout_s
        try:
            while self.terminal is None and time.monotonic() < deadline:
                msg = await c._take(self.id, min(c.timeout_s, deadline - time.monotonic()))
                if msg is None:
                    await c._reset()
                    break
                self._cancel_reply(msg)
        finally:
            c._finish(self.id, cancel.id)
        return self.terminal

    cancel = aclose


class AsyncMagnetClient(_Base):
    """asyncio client with the surface of MagnetClient (coroutines; streams are async iterators). One reader
    task routes every incoming message to the mailbox of its request id."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 context: zmq.asyncio.Context | None = None, **kw: Any) -> None:
        super().__init__(endpoint, timeout_s, **kw)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> None:
        self._sock = self._ctx.socket(zmq.DEALER)
        self._configure(self._sock)
        self._epoch += 1
        self._reader = asyncio.get_running_loop().create_task(self._read(self._sock))

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            self._route(self._decode(await sock.recv()))

    async def _shut(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, zmq.ZMQError):
                pass
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _reset(self) -> None:
        await self._shut()
        self._open()

    async def close(self) -> None:
        self._closed = True
        await self._shut()

    def _deliver(self, box: asyncio.Queue, msg: Any) -> None:
        box.put_nowait(msg)

    async def _send(self, msg: P.Request, data: bytes | None = None, share: str | None = None) -> int:
        data = data if data is not None else self._encode(msg)
        if msg.id in self._inbox:
            raise RequestFailed(P.ErrorCode.DUPLICATE_ID, f"request id {msg.id!r} is still in use",
                                request_id=msg.id, local=True)
        if self._closed:
            raise ClientError("this client is closed")
        if self._sock is None:
            self._open()
        self._inbox[msg.id] = self._inbox[share] if share else asyncio.Queue()
        self._last_send = time.monotonic()
        try:
            await self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self._finish(msg.id)
            raise DaemonUnavailable(self.endpoint, "the connection's send queue is full") from None
        return self._epoch

    def _finish(self, *rids: str) -> None:
        for rid in rids:
            self._inbox.pop(rid, None)

    async def _take(self, rid: str, timeout_s: float) -> Any:
        try:
            return await asyncio.wait_for(self._inbox[rid].get(), max(timeout_s, 0.0))
        except TimeoutError:
            return None

    async def _alive(self) -> bool:
        ping = P.Ping(id=new_request_id())
        await self._send(ping)
        try:
            return await self._take(ping.id, self.timeout_s) is not None
        finally:
            self._finish(ping.id)

    async def _await(self, rid: str, epoch: int, what: str, alive: bool) -> Any:
        quiet_since = time.monotonic()
        while True:
            if epoch != self._epoch:
                raise DaemonTimeout(self.endpoint, f"the connection was reset while {what} {rid} was running")
            msg = await self._take(rid, self.timeout_s)
            if msg is not None:
                return msg
            if not alive or not await self._alive():
                await self._reset()
                why = f"no reply to {what} within {self.timeout_s:g} s"
                raise (DaemonTimeout(self.endpoint, f"{what} {rid} went silent and pings are unanswered")
                       if alive else DaemonUnavailable(self.endpoint, why))
            if self.stream_timeout_s is not None and time.monotonic() - quiet_since > self.stream_timeout_s:
                raise DaemonTimeout(self.endpoint, f"no event for {what} {rid} in {self.stream_timeout_s:g} s")

    async def _call(self, make: Callable[[], P.Request], retry: bool) -> P.Event:
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            msg = make()
            await self._send(msg)
            try:
                reply = await self._take(msg.id, self.timeout_s)
            finally:
                self._finish(msg.id)
            if reply is not None:
                return self._reply(reply)
            log.info("no reply to %s within %g s (attempt %d of %d); reconnecting", msg.TYPE, self.timeout_s,
                     attempt, attempts)
            await self._reset()
        raise DaemonUnavailable(self.endpoint, f"no reply to {msg.TYPE} within {self.timeout_s:g} s "
                                               f"({attempts} attempt{'s' * (attempts > 1)})")

    async def _call_patient(self, msg: P.Request) -> P.Event:
        epoch = await self._send(msg)
        try:
            return self._reply(await self._await(msg.id, epoch, msg.TYPE, alive=True))
        finally:
            self._finish(msg.id)

    async def hello(self, capabilities: tuple[str, ...] = ()) -> P.Welcome:
        self.welcome = await self._call(lambda: P.Hello(id=new_request_id(), client=self.client_name,
                                                        capabilities=tuple(capabilities)), retry=True)
        return self.welcome

    async def ping(self, token: Any = None) -> P.Pong:
        return await self._call(lambda: P.Ping(id=new_request_id(), token=token), retry=True)

    async def status(self) -> P.StatusReply:
        return await self._call(lambda: P.Status(id=new_request_id()), retry=True)

    async def models(self) -> P.ModelsReply:
        return await self._call(lambda: P.Models(id=new_request_id()), retry=True)

    async def load(self, model: str, keep_alive_s: float | None = None) -> P.LoadReply:
        return await self._call_patient(P.Load(id=new_request_id(), model=model, keep_alive_s=keep_alive_s))

    async def unload(self, model: str) -> P.UnloadReply:
        return await self._call_patient(P.Unload(id=new_request_id(), model=model))

    async def cancel(self, request_id: str) -> P.CancelReply:
        return await self._call(lambda: P.Cancel(id=new_request_id(), target=request_id), retry=False)

    async def set_prompt(self, request_id: str, prompt: str) -> P.SetPromptReply:
        return await self._call(lambda: P.SetPrompt(id=new_request_id(), target=request_id, prompt=prompt),
                                retry=False)

    def generate(self, prompt: str | None = None, *, prompts: list[str] | None = None,
                 duration_s: float | None = None, loudness: float | None = None,
                 request_id: str | None = None, **render: Any) -> AsyncRequestStream:
        return AsyncRequestStream(self, self._generate_msg(prompt, prompts, duration_s, loudness, request_id,
                                                           render))

    def inpaint(self, source: Any, start_s: float | None, end_s: float | None, prompt: str, *,
                sample_rate: int | None = None,
                request_id: str | None = None, **render: Any) -> AsyncRequestStream:
        return AsyncRequestStream(self, self._inpaint_msg(source, start_s, end_s, prompt, sample_rate,
                                                          request_id, render))

    def continue_(self, source: Any, prompt: str, *, duration_s: float | None = None,
                  sample_rate: int | None = None, request_id: str | None = None,
                  **render: Any) -> AsyncRequestStream:
        return AsyncRequestStream(self, self._continue_msg(source, prompt, duration_s, sample_rate, request_id,
                                                           render))

    async def collect(self, stream: AsyncRequestStream, on_event: Callable | None = None) -> Result:
        asm = AudioAssembler()
        async with stream:
            async for msg in stream:
                if _is_audio(msg):
                    asm.add(msg)
                if on_event is not None:
                    on_event(msg)
        if not isinstance(stream.terminal, P.Done):
            raise RequestCancelled(request_id=stream.id)
        return build_result(stream.id, asm, stream.terminal)

    async def generate_audio(self, prompt: str | None = None, *, on_event: Callable | None = None,
                             **kw: Any) -> Result:
        return await self.collect(self.generate(prompt, **kw), on_event)

    async def inpaint_audio(self, *args: Any, on_event: Callable | None = None, **kw: Any) -> Result:
        return await self.collect(self.inpaint(*args, **kw), on_event)

    async def continue_audio(self, *args: Any, on_event: Callable | None = None, **kw: Any) -> Result:
        return await self.collect(self.continue_(*args, **kw), on_event)
