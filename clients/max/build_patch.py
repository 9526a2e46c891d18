"""Writes magnet.maxpat (plain Max) and magnet.amxd (Max for Live audio effect) from one description.

    python clients/max/build_patch.py        # rewrites both files next to this script

The two differ only in where the tempo comes from (a number box / Live's song tempo via live.observer) and
where the sound goes (dac~ / plugout~). tests/test_osc_spec.py checks the ports and addresses against
daemon/osc.py and that the files are what this script writes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEND_PORT, REPLY_PORT = 9000, 9001  # protocol/OSC.md §1
BUFFER = "---magnet"  # `---` makes the name unique per device in Live; a plain name in Max


class Patch:
    def __init__(self) -> None:
        self.boxes: list[dict] = []
        self.lines: list[dict] = []

    def box(self, x: float, y: float, text: str = "", cls: str = "newobj", ins: int = 1, outs: int = 1,
            types: list[str] | None = None, w: float = 0.0, h: float = 22.0, **attrs) -> str:
        bid = f"obj-{len(self.boxes) + 1}"
        b = {"id": bid, "maxclass": cls, "numinlets": ins, "numoutlets": outs,
             "patching_rect": [x, y, w or max(40.0, 7.0 * len(text) + 12), h], **attrs}
        if outs:
            b["outlettype"] = types or [""] * outs
        if text:
            b["text"] = text
        self.boxes.append({"box": b})
        return bid

    def obj(self, x, y, text, ins=1, outs=1, types=None, **attrs) -> str:
        return self.box(x, y, text, "newobj", ins, outs, types, **attrs)

    def msg(self, x, y, text) -> str:
        return self.box(x, y, text, "message", 2, 1)

    def comment(self, x, y, text) -> str:
        return self.box(x, y, text, "comment", 1, 0)

    def wire(self, src: str, dst: str, outlet: int = 0, inlet: int = 0) -> None:
        self.lines.append({"patchline": {"source": [src, outlet], "destination": [dst, inlet]}})

    def doc(self) -> dict:
        return {"patcher": {
            "fileversion": 1,
            "appversion": {"major": 8, "minor": 6, "revision": 0, "architecture": "x64", "modernui": 1},
            "classnamespace": "box", "rect": [60.0, 60.0, 1180.0, 760.0], "gridsize": [15.0, 15.0],
            "default_fontsize": 12.0, "default_fontname": "Arial", "boxes": self.boxes, "lines": self.lines}}


def build(live: bool) -> dict:
    p = Patch()
    p.comment(15, 10, "magnet-rt over OSC (protocol/OSC.md): requests to udp 9000, replies on 9001. "
                      "Type a prompt and press Enter, then Generate / Loop / Variations; select in the waveform "
                      "for Inpaint.")
    send = p.obj(15, 690, f"udpsend 127.0.0.1 {SEND_PORT}", 1, 0)

    # --- inputs: prompt, preset, seed, bars, tempo ------------------------------------------------------------
    prompt = p.box(15, 45, cls="textedit", ins=1, outs=4, types=["", "int", "", ""], w=300, h=40)
    route_text = p.obj(15, 95, "route text", 2, 2)
    tosym = p.obj(15, 125, "tosymbol", 1, 1)
    p.wire(prompt, route_text)
    p.wire(route_text, tosym)
    preset = p.box(330, 45, cls="umenu", ins=1, outs=3, types=["int", "", ""], w=100,
                   items=["live", ",", "balanced", ",", "studio"], parameter_enable=0)
    seed = p.box(445, 45, cls="number", ins=1, outs=2, types=["", "bang"], w=60, minimum=-1)
    bars = p.box(520, 45, cls="number", ins=1, outs=2, types=["", "bang"], w=50, minimum=1, maximum=16)
    bpm = p.box(585, 45, cls="flonum", ins=1, outs=2, types=["", "bang"], w=60)
    for x, label in ((330, "preset"), (445, "seed (-1 random)"), (520, "bars"), (585, "bpm")):
        p.comment(x, 22, label)
    init = p.obj(700, 45, "loadbang", 1, 1, ["bang"])
    for target, value in ((preset, "0"), (seed, "-1"), (bars, "4"), (bpm, "120.")):
        m = p.msg(700 + 45 * len(p.lines) % 300, 75, value)
        p.wire(init, m)
        p.wire(m, target)
    if live:  # Live's song tempo drives bpm
        dev = p.obj(700, 110, "live.thisdevice", 1, 3, ["bang", "int", "int"])
        path = p.msg(700, 140, "path live_set")
        lpath = p.obj(700, 170, "live.path", 1, 3)
        observer = p.obj(700, 200, "live.observer tempo", 2, 2)
        p.wire(dev, path)
        p.wire(path, lpath)
        p.wire(lpath, observer, 0, 1)
        p.wire(observer, bpm)

    # --- actions: each button numbers its job, remembers it for Cancel, and fires a pack ----------------------
    cancel = p.msg(870, 600, "/magnet/cancel")
    p.comment(870, 575, "click to cancel the last job")
    p.wire(cancel, send)
    packs = {}
    specs = [  # name, pack format, (inlet for prompt, preset, seed, bars, bpm)
        ("Generate", "gen", "/magnet/generate", "pack s s s i i f", (1, 2, 3, 4, 5)),
        ("Loop", "loop", "/magnet/loop", "pack s s i f s i", (1, 4, 5, 2, 3)),
        ("Variations", "var", "/magnet/variations", "pack s s s i 4 i f", (1, 2, 3, 5, 6)),
        ("Inpaint", "inp", "/magnet/inpaint", "pack s s f f s s i", (4, 5, 6, None, None)),
    ]
    for k, (label, tag, address, fmt, inlets) in enumerate(specs):
        x = 15 + 215 * k
        button = p.box(x, 300, cls="textbutton", ins=1, outs=3, types=["", "", "int"], w=90, text=label)
        counter = p.obj(x, 330, "counter", 5, 4, ["int", "", "", ""])
        name = p.obj(x, 360, f"sprintf symout {tag}%ld", 1, 1)
        fan = p.obj(x, 390, "t s s", 1, 2)
        pack = p.obj(x, 500, fmt, len(fmt.split()) - 1, 1)
        head = p.obj(x, 530, f"prepend {address}", 2, 1)
        remember = p.obj(x + 80, 420, "prepend set /magnet/cancel", 2, 1)
        for a, b in ((button, counter), (counter, name), (name, fan), (pack, head), (head, send)):
            p.wire(a, b)
        p.wire(fan, remember, 1)
        p.wire(remember, cancel)
        p.wire(fan, pack, 0)
        for source, inlet, outlet in zip((tosym, preset, seed, bars, bpm), inlets, (0, 1, 0, 0, 0), strict=True):
            if inlet is not None:
                p.wire(source, pack, outlet, inlet)
        packs[tag] = pack

    # --- replies ---------------------------------------------------------------------------------------------
    receive = p.obj(15, 600, f"udpreceive {REPLY_PORT} @defer 1", 1, 1)
    replies = ["/magnet/accepted", "/magnet/progress", "/magnet/done", "/magnet/error", "/magnet/cancelled",
               "/magnet/pong", "/magnet/startup"]
    route = p.obj(15, 630, "route " + " ".join(replies), 2, len(replies) + 1)
    log = p.obj(600, 690, "print magnet", 1, 0)
    p.wire(receive, route)
    for i in range(len(replies) + 1):
        if replies[i:i + 1] != ["/magnet/progress"]:
            p.wire(route, log, i)
    progress = p.obj(150, 660, "unpack s f", 1, 2)
    shown = p.box(150, 690, cls="flonum", ins=1, outs=2, types=["", "bang"], w=60)
    p.comment(215, 690, "progress 0-1")
    p.wire(route, progress, 1)
    p.wire(progress, shown, 1)
    error = p.msg(300, 720, "")
    p.wire(p.obj(300, 690, "prepend set", 2, 1), error)
    p.wire(route, p.boxes[-1]["box"]["id"], 3)

    # --- result: done -> buffer~ replace, list of takes, waveform~ selection -> inpaint ----------------------------
    done = p.obj(870, 300, "unpack s s f i i i i i", 1, 8)
    p.wire(route, done, 2)
    path = p.obj(870, 330, "t s s", 1, 2)
    p.wire(done, path, 1)
    takes = p.box(870, 390, cls="umenu", ins=1, outs=3, types=["int", "", ""], w=280, parameter_enable=0)
    p.comment(870, 365, "takes (pick one to load it)")
    p.wire(path, p.obj(960, 360, "prepend append", 2, 1), 1)
    p.wire(p.boxes[-1]["box"]["id"], takes)
    chosen = p.obj(870, 420, "t s s", 1, 2)
    p.wire(path, chosen, 0)
    p.wire(takes, chosen, 1)
    replace = p.obj(870, 450, "prepend replace", 2, 1)
    buffer = p.obj(870, 480, f"buffer~ {BUFFER}", 1, 2, ["float", "bang"])
    p.wire(chosen, replace, 0)
    p.wire(replace, buffer)
    p.wire(chosen, packs["inp"], 1, 1)  # the take on screen is what Inpaint regenerates
    wave = p.box(15, 180, cls="waveform~", ins=5, outs=6, types=["float", "float", "float", "float", "list", ""],
                 w=640, h=100)
    refresh = p.msg(870, 510, f"set {BUFFER}, mode select")
    p.wire(buffer, refresh, 1)
    p.wire(init, refresh)
    p.wire(refresh, wave)
    for outlet, inlet in ((2, 2), (3, 3)):  # selection start / end in ms -> seconds
        seconds = p.obj(15 + 215 * 3 + 100 * (outlet - 2), 470, "/ 1000.", 2, 1, ["float"])
        p.wire(wave, seconds, outlet)
        p.wire(seconds, packs["inp"], 0, inlet)

    # --- play / loop ---------------------------------------------------------------------------------------------
    play = p.box(870, 140, cls="toggle", ins=1, outs=1, types=["int"], w=24, h=24, parameter_enable=0)
    p.comment(900, 140, "play (loops)")
    select = p.obj(870, 170, "sel 1 0", 3, 3, ["bang", "bang", ""])
    start, stop = p.msg(870, 200, "loop 1, startloop"), p.msg(990, 200, "stop")
    speed = p.obj(1050, 170, "sig~ 1", 1, 1, ["signal"])
    groove = p.obj(870, 230, f"groove~ {BUFFER} 1", 3, 2, ["signal", "signal"])
    gain = p.obj(870, 260, "*~ 0.8", 2, 1, ["signal"])
    out = p.obj(870, 290, "plugout~" if live else "dac~", 2, 0)
    for a, b in ((play, select), (start, groove), (stop, groove), (speed, groove), (groove, gain)):
        p.wire(a, b)
    p.wire(select, stop, 1)
    p.wire(select, start, 0)
    p.wire(gain, out, 0, 0)
    p.wire(gain, out, 0, 1)
    if live:  # an audio effect device passes its input through under the loop
        plugin = p.obj(1000, 260, "plugin~", 2, 2, ["signal", "signal"])
        p.wire(plugin, out, 0, 0)
        p.wire(plugin, out, 1, 1)
    return p.doc()


def amxd(doc: dict, kind: bytes = b"aaaa") -> bytes:
    """The Max for Live container: 'ampf' <4> kind, 'meta' <4> 0, 'ptch' <n> patcher JSON (peers.md §5)."""
    body = (json.dumps(doc, indent=1) + "\n").encode()
    return (b"ampf" + struct.pack("<I", 4) + kind + b"meta" + struct.pack("<I", 4) + b"\0\0\0\0"
            + b"ptch" + struct.pack("<I", len(body)) + body)


def write(folder: Path = HERE) -> None:
    (folder / "magnet.maxpat").write_text(json.dumps(build(live=False), indent=1) + "\n")
    (folder / "magnet.amxd").write_bytes(amxd(build(live=True)))


if __name__ == "__main__":
    write()
