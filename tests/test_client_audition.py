"""Live audition without a sound card: the ring buffer, a player driven by a fake output stream whose
callback runs on its own thread (as PortAudio's does), take stepping, and the no-PortAudio / no-device paths."""

from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest

from cli.main import main
from clients import audition
from clients.audition import Audition, Player, RingBuffer
from clients.errors import AudioUnavailable
from clients.fakedaemon import FakeDaemon

BLOCK = 256


class FakeStream:
    """Stands in for sounddevice.OutputStream: a thread calls `callback` every ~2 ms with a fresh block."""

    instances: list[FakeStream] = []

    def __init__(self, samplerate, channels, dtype, device, callback):
        self.samplerate, self.channels, self.callback = samplerate, channels, callback
        self.blocks: list[np.ndarray] = []
        self.started_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        FakeStream.instances.append(self)

    def _run(self):
        while not self._stop.is_set():
            out = np.full((BLOCK, self.channels), np.nan, np.float32)  # the callback must fill every frame
            t0 = time.perf_counter()
            self.callback(out, BLOCK, None, None)
            assert time.perf_counter() - t0 < 0.05, "the callback must never block"
            self.blocks.append(out)
            time.sleep(0.002)

    def start(self):
        self.started_at = time.monotonic()
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(2)

    def close(self):
        pass

    def played(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, self.channels), np.float32)


def fake_sounddevice(devices=None):
    return types.SimpleNamespace(
        OutputStream=FakeStream, PortAudioError=type("PortAudioError", (Exception,), {}),
        check_output_settings=lambda device=None: None,
        query_devices=lambda: devices or [],
        default=types.SimpleNamespace(device=[0, 1]))


@pytest.fixture(autouse=True)
def _reset_streams():
    FakeStream.instances.clear()


def test_ring_buffer_wraps_fills_silence_and_counts_underruns():
    ring = RingBuffer(10, 2)
    a = np.arange(16, dtype=np.float32).reshape(8, 2)
    assert ring.write(a) == 8 and ring.available == 8
    out = np.full((6, 2), 9.0, np.float32)
    assert ring.read_into(out) == 6
    np.testing.assert_array_equal(out, a[:6])
    b = -np.arange(1, 15, dtype=np.float32).reshape(7, 2)  # wraps around the end of the buffer
    assert ring.write(b) == 7
    out = np.full((12, 2), 9.0, np.float32)
    assert ring.read_into(out) == 9
    np.testing.assert_array_equal(out[:9], np.concatenate([a[6:], b]))
    assert (out[9:] == 0).all() and ring.underruns == 1  # late data: silence, counted
    assert ring.write(np.ones((11, 2), np.float32), timeout_s=0.0) == 10  # full: bounded wait, partial write
    ring.close()
    ring.read_into(np.zeros((20, 2), np.float32))
    assert ring.drained and ring.underruns == 1  # running dry after close is the end, not an underrun


def test_player_starts_on_the_first_chunk_and_plays_everything_in_order():
    player = Player(stream_factory=FakeStream)
    rng = np.random.default_rng(0)
    take = rng.uniform(0.1, 0.9, (1, 8000)).astype(np.float32)  # no zero samples: silence is visible
    chunks = np.array_split(take, 8, axis=1)
    aud = Audition(player)
    aud.on_chunk(0, chunks[0], 8000, last=False)
    stream = FakeStream.instances[0]
    assert stream.started_at is not None  # playback began before the rest arrived
    for i, c in enumerate(chunks[1:], 1):
        time.sleep(0.01)  # chunks arrive slower than they play: underruns happen and are silent
        aud.on_chunk(0, c, 8000, last=i == 7)
        aud.on_chunk(1, c, 8000, last=i == 7)  # other takes are not streamed
    assert player.wait(5.0)
    ring = player.ring
    player.stop()
    played = stream.played()[:, 0]
    assert not np.isnan(played).any()
    np.testing.assert_array_equal(played[played != 0], take[0])
    assert ring.underruns > 0


def test_finish_steps_through_takes_with_keys():
    takes = [np.full((1, 400), v, np.float32) for v in (0.25, 0.5, 0.75)]
    player = Player(stream_factory=FakeStream)
    played: list[float] = []
    real_play = player.play
    player.play = lambda x, sr: (played.append(float(x[0, 0])), real_play(x, sr))
    keys = iter("nnprxq")
    Audition(player, out=sys.stderr).finish(takes, 8000, keys=lambda: next(keys))
    assert played == [0.25, 0.5, 0.75, 0.5, 0.5]  # take 1 first (nothing streamed), then n, n, p, r; x ignored
    assert player.stream is None  # stopped on q
    played.clear()
    Audition(player).finish(takes, 8000, keys=None)  # no TTY: play take 1 only
    assert played == [0.25]


def test_missing_portaudio_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails, as without libportaudio
    with pytest.raises(AudioUnavailable, match="PortAudio"):
        Player()
    with FakeDaemon() as d:
        assert main(["generate", "x", "--play", "--connect", d.endpoint]) == 1
        assert d.received == []  # refused before anything was sent
    err = capsys.readouterr().err
    assert "libportaudio2" in err and "without --play" in err and "Traceback" not in err
    assert main(["generate", "--list-devices"]) == 1


def test_no_output_device(monkeypatch, capsys):
    sd = fake_sounddevice()

    def refuse(device=None):
        raise sd.PortAudioError("Error querying device -1")

    sd.check_output_settings = refuse
    monkeypatch.setattr(audition, "load_sounddevice", lambda: sd)
    with pytest.raises(AudioUnavailable, match="no default audio output device"):
        Player()
    assert main(["generate", "--list-devices"]) == 1
    assert "no audio output device" in capsys.readouterr().err


def test_list_devices_prints_outputs_only(monkeypatch, capsys):
    devices = [{"name": "mic", "max_output_channels": 0, "default_samplerate": 48000.0},
               {"name": "speakers", "max_output_channels": 2, "default_samplerate": 44100.0}]
    monkeypatch.setattr(audition, "load_sounddevice", lambda: fake_sounddevice(devices))
    assert main(["inpaint", "--list-devices"]) == 0  # acts before the required arguments are checked
    out = capsys.readouterr().out
    assert "speakers" in out and "mic" not in out and out.startswith("*   1")


def test_cli_play_streams_take_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(audition, "load_sounddevice", lambda: fake_sounddevice())
    with FakeDaemon() as d:
        code = main(["generate", "x", "--play", "--connect", d.endpoint, "--duration", "0.5", "--seed", "4",
                     "--variations", "2", "-o", str(tmp_path / "o.wav")])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.split() == [str(tmp_path / "o.wav"), str(tmp_path / "o-2.wav")]
    played = FakeStream.instances[0].played()[:, 0]
    expected = d._sine(16000, 1, 4)[0]  # take 1 only: without a TTY nothing else is played
    np.testing.assert_array_equal(played[played != 0], expected[expected != 0])
