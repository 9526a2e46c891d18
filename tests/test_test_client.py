"""The tests' own protocol client (daemon.testing.Client) heartbeats as the real client does: counted from its
last send, so a test reading a fast stream of progress messages still pings, and the daemon (which drops
clients silent for 30 s) keeps hearing it however long a render takes on a loaded machine."""

from __future__ import annotations

import threading
import time

import zmq

from daemon.testing import Client
from protocol import pack, unpack
from protocol.messages import Ping, Progress


def test_a_client_reading_a_fast_stream_still_pings():
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Client(zctx, f"tcp://127.0.0.1:{port}", ping_every_s=0.3)
    pings: list[str] = []
    stop = threading.Event()

    def serve() -> None:  # a stand-in daemon: one progress message every 0.05 s, pings counted
        peer = None
        step = 0
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            if router.poll(50):
                peer, raw = router.recv_multipart()
                msg = unpack(raw)
                if msg.TYPE == "ping" and msg.id.startswith("hb-"):
                    pings.append(msg.id)
            if peer is not None and step < 40:
                step += 1
                router.send_multipart([peer, pack(Progress(id="r", step=step, total=40, stage=0, stage_step=step,
                                                           stage_steps=40, elapsed_s=0.0))])

    client.send(Ping(id="first"))  # the stand-in learns the client's identity from it
    t = threading.Thread(target=serve)
    t.start()
    try:
        got = [client.next("r", timeout=10).step for _ in range(40)]  # about 2 s of messages, each under 0.3 s
    finally:
        stop.set()
        t.join(15)
        client.close()
        router.close()
        zctx.term()
    assert got == list(range(1, 41))
    assert len(pings) >= 3, pings  # one per 0.3 s of the client's silence, though a message came every 0.05 s
