"""A minimal Standard MIDI File writer (format 0, one track, several channels): enough for the datagen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PPQ = 480  # ticks per quarter note


@dataclass(frozen=True)
class Note:
    start: float  # beats (quarter notes)
    length: float  # beats
    pitch: int
    velocity: int
    channel: int  # 0-15; 9 = GM drums


def _vlq(n: int) -> bytes:
    """Variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[Note], tempo_bpm: float, programs: dict[int, int]) -> bytes:
    """notes + tempo + {channel: GM program} -> the bytes of a format-0 .mid file (deterministic)."""
    events: list[tuple[int, int, bytes]] = []  # (tick, order, data); order: meta/program < note off < note on
    us_per_beat = round(60_000_000 / tempo_bpm)
    events.append((0, 0, b"\xff\x51\x03" + us_per_beat.to_bytes(3, "big")))
    events.append((0, 0, b"\xff\x58\x04\x04\x02\x18\x08"))  # 4/4
    for ch, prog in sorted(programs.items()):
        if ch != 9:
            events.append((0, 1, bytes([0xC0 | ch, prog & 0x7F])))
        events.append((0, 1, bytes([0xB0 | ch, 7, 100])))  # channel volume
    for n in notes:
        on = max(0, round(n.start * PPQ))
        off = max(on + 1, round((n.start + n.length) * PPQ))
        pitch, vel = min(127, max(0, n.pitch)), min(127, max(1, n.velocity))
        events.append((on, 3, bytes([0x90 | n.channel, pitch, vel])))
        events.append((off, 2, bytes([0x80 | n.channel, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    track, last = bytearray(), 0
    for tick, _, data in events:
        track += _vlq(tick - last) + data
        last = tick
    track += _vlq(PPQ) + b"\xff\x2f\x00"  # end of track one beat after the last event
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + PPQ.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def write_midi(path: str | Path, notes: list[Note], tempo_bpm: float, programs: dict[int, int]) -> Path:
    path = Path(path)
    path.write_bytes(midi_bytes(notes, tempo_bpm, programs))
    return path
