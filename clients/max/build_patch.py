"""Writes magnet.maxpat (plain Max) and magnet.amxd (Max for Live audio effect) from one description.

    python clients/max/build_patch.py        # rewrites both files next to this script

The two differ only in where the tempo comes from (a number box / Live's song tempo via live.observer) and
where the sound goes (dac~ / plugout~). tests/test_osc_spec.py checks the ports and addresses against
clients/osc.py and that the files are what this script writes.
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


PORTS = (20000, 40000)  # each instance listens on 20000 + random 40000 (protocol/OSC.md §1: ids end in @<port>)
EMPTY = "set type a prompt first (or @unconditioned for a take without text)"
SNAP = "expr int($f1 * $f2 / 60000. + 0.5) / 4."  # ms at bpm -> bars, on the nearest beat (4/4)
FREE = "expr $f1 * $f2 / 240000."  # ms at bpm -> bars, unsnapped
REPLIES = ["/magnet/accepted", "/magnet/progress", "/magnet/done", "/magnet/error", "/magnet/cancelled",
           "/magnet/pong", "/magnet/startup"]


def build(live: bool) -> dict:
    p = Patch()
    p.comment(15, 10, "magnet-rt over OSC (protocol/OSC.md): requests to udp 9000, replies on this instance's own "
                      "port. Type a prompt and press Enter (or Send), then Generate / Loop / Variations; select in "
                      "the waveform for Inpaint (snapped to beats when snap is on).")
    send = p.obj(15, 690, f"udpsend 127.0.0.1 {SEND_PORT}", 1, 0)
    error = p.msg(300, 720, "")
    prompt, gate_state = _prompt(p, error)
    preset, seed, bars, bpm, init = _settings(p, live)
    port = _instance_port(p, init)
    options = _loudness(p, init)
    cancel_last = p.msg(870, 600, "/magnet/cancel")
    cancel_all = p.msg(1000, 600, "/magnet/cancel")
    p.comment(870, 575, "cancel: the last job / every job of this device")
    p.wire(p.obj(1000, 630, "sprintf symout *@%ld", 1, 1), p.obj(1000, 655, "prepend set /magnet/cancel", 2, 1))
    p.wire(port, p.boxes[-2]["box"]["id"])
    p.wire(p.boxes[-1]["box"]["id"], cancel_all)
    for box in (cancel_last, cancel_all):
        p.wire(box, send)
    sources = {"prompt": prompt, "preset": preset, "seed": seed, "bars": bars, "bpm": bpm}
    packs = {}
    specs = [  # label, tag, address, pack format, {source: inlet}, options
        ("Generate", "gen", "/magnet/generate", "pack s s s i i f",
         {"prompt": 1, "preset": 2, "seed": 3, "bars": 4, "bpm": 5}, True),
        ("Loop", "loop", "/magnet/loop", "pack s s i f s i", {"prompt": 1, "bars": 2, "bpm": 3, "preset": 4, "seed": 5},
         True),
        ("Variations", "var", "/magnet/variations", "pack s s s i 4 i f",
         {"prompt": 1, "preset": 2, "seed": 3, "bars": 5, "bpm": 6}, True),
    ]
    for k, (label, tag, address, fmt, inlets, opts) in enumerate(specs):
        name = _action(p, 15 + 215 * k, label, tag, gate_state, port, cancel_last)
        packs[tag] = _request(p, 15 + 215 * k, name, fmt, address, sources, inlets, options if opts else None, send)
    inpaint = _action(p, 15 + 215 * 3, "Inpaint", "inp", gate_state, port, cancel_last)
    chosen, wave = _replies(p, port, error, live, init)
    _inpaint(p, inpaint, chosen, wave, sources, send, bpm, init)
    _play(p, live)
    return p.doc()


def _prompt(p: Patch, error: str) -> tuple[str, str]:
    """textedit with keymode 1 (Return outputs the text) and a Send button (bang outputs it too); an empty
    prompt shows a message and closes the actions' gate, a prompt opens it."""
    prompt = p.box(15, 45, cls="textedit", ins=1, outs=4, types=["", "int", "", ""], w=300, h=40, keymode=1, lines=1)
    send_button = p.box(15, 90, cls="textbutton", ins=1, outs=3, types=["", "", "int"], w=60, text="Send")
    p.wire(send_button, prompt)
    route_text = p.obj(90, 95, "route text", 2, 2)
    empty = p.obj(90, 120, "route bang", 2, 2)
    tosym = p.obj(180, 150, "tosymbol", 1, 1)
    is_empty, has_text = p.msg(90, 150, "0"), p.msg(250, 150, "1")
    warn, clear = p.msg(90, 175, EMPTY), p.msg(250, 175, "set")
    state = p.obj(250, 120, "t b b", 1, 2, ["bang", "bang"])
    p.wire(prompt, route_text)
    p.wire(route_text, empty)
    for a, b, outlet in ((empty, is_empty, 0), (empty, warn, 0), (empty, tosym, 1), (tosym, state, 0),
                         (state, has_text, 1), (state, clear, 0), (warn, error, 0), (clear, error, 0)):
        p.wire(a, b, outlet)
    out = p.obj(180, 180, "t s", 1, 1)  # the prompt, as one symbol
    p.wire(tosym, out)
    gate_state = p.obj(330, 180, "t i", 1, 1)
    p.wire(is_empty, gate_state)
    p.wire(has_text, gate_state)
    return out, gate_state


def _settings(p: Patch, live: bool) -> tuple[str, str, str, str, str]:
    preset = p.box(330, 45, cls="umenu", ins=1, outs=3, types=["int", "", ""], w=100,
                   items=["live", ",", "balanced", ",", "studio"], parameter_enable=0)
    seed = p.box(445, 45, cls="number", ins=1, outs=2, types=["", "bang"], w=60, minimum=-1)
    bars = p.box(520, 45, cls="number", ins=1, outs=2, types=["", "bang"], w=50, minimum=1, maximum=16)
    bpm = p.box(585, 45, cls="flonum", ins=1, outs=2, types=["", "bang"], w=60)
    for x, label in ((330, "preset"), (445, "seed (-1 random)"), (520, "bars"), (585, "bpm")):
        p.comment(x, 22, label)
    init = p.obj(700, 45, "loadbang", 1, 1, ["bang"])
    for k, (target, value) in enumerate(((preset, "0"), (seed, "-1"), (bars, "4"), (bpm, "120."))):
        m = p.msg(700 + 45 * k, 75, value)
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
    return preset, seed, bars, bpm, init


def _instance_port(p: Patch, init: str) -> str:
    """A reply port per instance: 20000 + random 40000, shown in a number box (type another to change it)."""
    rnd = p.obj(1000, 45, f"random {PORTS[1]}", 2, 1, ["int"])
    offset = p.obj(1000, 70, f"+ {PORTS[0]}", 2, 1, ["int"])
    shown = p.box(1000, 95, cls="number", ins=1, outs=2, types=["", "bang"], w=60, minimum=1, maximum=65535)
    p.comment(1065, 95, "reply port of this instance")
    port = p.obj(1000, 120, "t i i", 1, 2, ["int", "int"])
    p.wire(init, rnd)
    p.wire(rnd, offset)
    p.wire(offset, shown)
    p.wire(shown, port)
    return port


def _loudness(p: Patch, init: str) -> str:
    """loudness (LUFS) and normalize (0: the model's own level) -> `loudness X normalize N`, appended to
    generate, loop and variations (protocol/OSC.md §2 options)."""
    lufs = p.box(1000, 160, cls="flonum", ins=1, outs=2, types=["", "bang"], w=60, minimum=-70.0, maximum=0.0)
    normalize = p.box(1070, 160, cls="toggle", ins=1, outs=1, types=["int"], w=24, h=24, parameter_enable=0)
    p.comment(1000, 138, "loudness LUFS / normalize")
    both = p.obj(1000, 190, "pak 0. 0", 2, 1)
    options = p.msg(1000, 215, "loudness $1 normalize $2")
    for target, value in ((lufs, "-14."), (normalize, "1")):
        m = p.msg(1100 + 40 * (target == normalize), 130, value)
        p.wire(init, m)
        p.wire(m, target)
    p.wire(lufs, both)
    p.wire(normalize, both, 0, 1)
    p.wire(both, options)
    return options


def _action(p: Patch, x: float, label: str, tag: str, gate_state: str, port: str, cancel: str) -> str:
    """A button: bang the textedit (it outputs the prompt; the gate opens or closes), go on only when the prompt
    is not empty, number the job `<tag><n>@<port>`, remember it for cancel. Returns the object whose outlet 0
    gives the id."""
    button = p.box(x, 300, cls="textbutton", ins=1, outs=3, types=["", "", "int"], w=90, text=label)
    order = p.obj(x, 325, "t b b", 1, 2, ["bang", "bang"])
    textedit = next(b["box"]["id"] for b in p.boxes if b["box"]["maxclass"] == "textedit")
    gate = p.obj(x, 350, "gate 1 1", 2, 1)
    counter = p.obj(x, 375, "counter", 5, 4, ["int", "", "", ""])
    name = p.obj(x, 400, f"sprintf symout {tag}%ld@%ld", 2, 1)
    fan = p.obj(x, 425, "t s s", 1, 2)
    remember = p.obj(x + 80, 450, "prepend set /magnet/cancel", 2, 1)
    p.wire(button, order)
    p.wire(order, textedit, 1)  # first: the textedit outputs the prompt (and the gate opens or closes)
    p.wire(order, gate, 0, 1)
    p.wire(gate_state, gate)
    p.wire(gate, counter)
    p.wire(counter, name)
    p.wire(port, name, 1, 1)
    p.wire(name, fan)
    p.wire(fan, remember, 1)
    p.wire(remember, cancel)
    return fan


def _request(p: Patch, x: float, name: str, fmt: str, address: str, sources: dict[str, str], inlets: dict[str, int],
             options: str | None, send: str) -> str:
    pack = p.obj(x, 500, fmt, len(fmt.split()) - 1, 1)
    p.wire(name, pack)
    for source, inlet in inlets.items():
        p.wire(sources[source], pack, 1 if source == "preset" else 0, inlet)
    head = p.obj(x, 560, f"prepend {address}", 2, 1)
    if options is None:
        p.wire(pack, head)
    else:
        tail = p.obj(x, 530, "append", 2, 1)
        p.wire(pack, tail)
        p.wire(options, tail, 0, 1)
        p.wire(tail, head)
    p.wire(head, send)
    return pack


def _replies(p: Patch, port: str, error: str, live: bool, init: str) -> tuple[str, str]:
    """udpreceive on the instance's port; every reply but progress printed whole (`print magnet`); done ->
    buffer~ replace, the takes menu (every take of the session), and in Live a clip slot (magnet_live.js)."""
    receive = p.obj(15, 600, f"udpreceive {REPLY_PORT} @defer 1", 1, 1)
    p.wire(p.obj(15, 575, "prepend port", 2, 1), receive)
    p.wire(port, p.boxes[-1]["box"]["id"])
    quiet = p.obj(15, 625, "route /magnet/progress", 2, 2)
    log = p.obj(600, 690, "print magnet", 1, 0)
    route = p.obj(15, 650, "route " + " ".join(REPLIES), 2, len(REPLIES) + 1)
    p.wire(receive, quiet)
    p.wire(quiet, log, 1)
    p.wire(receive, route)
    progress = p.obj(150, 680, "unpack s f", 1, 2)
    shown = p.box(150, 705, cls="flonum", ins=1, outs=2, types=["", "bang"], w=60)
    p.comment(215, 705, "progress 0-1")
    p.wire(route, progress, 1)
    p.wire(progress, shown, 1)
    p.wire(route, p.obj(300, 690, "prepend set", 2, 1), 3)
    p.wire(p.boxes[-1]["box"]["id"], error)
    done = p.obj(870, 300, "unpack s s f i i i i i", 1, 8)
    p.wire(route, done, 2)
    path = p.obj(870, 330, "t s s", 1, 2)
    p.wire(done, path, 1)
    takes = p.box(870, 390, cls="umenu", ins=1, outs=3, types=["int", "", ""], w=280, parameter_enable=0)
    p.comment(870, 365, "takes of this session (pick one to load it)")
    p.wire(path, p.obj(960, 360, "prepend append", 2, 1), 1)
    p.wire(p.boxes[-1]["box"]["id"], takes)
    chosen = p.obj(870, 420, "t s s", 1, 2)
    p.wire(path, chosen, 0)
    p.wire(takes, chosen, 1)
    replace = p.obj(870, 450, "prepend replace", 2, 1)
    buffer = p.obj(870, 480, f"buffer~ {BUFFER}", 1, 2, ["float", "bang"])
    p.wire(chosen, replace, 0)
    p.wire(replace, buffer)
    wave = p.box(15, 200, cls="waveform~", ins=5, outs=6, types=["float", "float", "float", "float", "list", ""],
                 w=640, h=90)
    refresh = p.msg(870, 510, f"set {BUFFER}, mode select")
    p.wire(buffer, refresh, 1)
    p.wire(init, refresh)
    p.wire(refresh, wave)
    if live:
        _into_live(p, done, error)
    return chosen, wave


def _into_live(p: Patch, done: str, error: str) -> None:
    """Into Live: `take <path> <seconds> <bpm>` -> magnet_live.js (first empty clip slot of this track, warped)."""
    button = p.box(1180, 300, cls="textbutton", ins=1, outs=3, types=["", "", "int"], w=110, text="Into Live")
    auto = p.box(1180, 330, cls="toggle", ins=1, outs=1, types=["int"], w=24, h=24, parameter_enable=0)
    p.comment(1210, 330, "every take into Live")
    last = p.obj(1180, 360, "pack s f", 2, 1)
    p.wire(done, last, 1)
    p.wire(done, last, 2, 1)
    fan = p.obj(1180, 390, "t l l", 1, 2)
    again = p.obj(1300, 420, "zl reg", 2, 2)
    gate = p.obj(1180, 420, "gate 1", 2, 1)
    p.wire(last, fan)
    p.wire(fan, again, 0, 1)
    p.wire(fan, gate, 1, 1)
    p.wire(auto, gate)
    p.wire(button, again)
    tempo = next(b["box"]["id"] for b in p.boxes if b["box"].get("text") == "live.observer tempo")
    withbpm = p.obj(1180, 450, "append", 2, 1)
    p.wire(tempo, withbpm, 0, 1)
    head = p.obj(1180, 480, "prepend take", 2, 1)
    js = p.obj(1180, 510, "js magnet_live.js", 1, 1)
    p.wire(gate, withbpm)
    p.wire(again, withbpm)
    p.wire(withbpm, head)
    p.wire(head, js)
    p.wire(js, p.obj(1180, 540, "print magnet-live", 1, 0))
    p.wire(js, p.obj(1300, 540, "route error", 2, 2))
    p.wire(p.boxes[-1]["box"]["id"], p.obj(1300, 565, "prepend set", 2, 1))
    p.wire(p.boxes[-1]["box"]["id"], error)


def _inpaint(p: Patch, name: str, chosen: str, wave: str, sources: dict[str, str], send: str, bpm: str,
             init: str) -> None:
    """Inpaint the selection of the take on screen: snapped to the nearest beat at the set's tempo and sent as
    bars (/magnet/inpaint_bars, downbeat 0: the take starts on one) when snap is on, else in seconds."""
    snap = p.box(870, 540, cls="toggle", ins=1, outs=1, types=["int"], w=24, h=24, parameter_enable=0)
    p.comment(900, 540, "snap to beats")
    on = p.msg(930, 565, "1")
    p.wire(init, on)
    p.wire(on, snap)
    choose = p.obj(870, 565, "expr 2 - $i1", 1, 1)
    p.wire(snap, choose)
    route = p.obj(660, 430, "gate 2 1", 2, 2)
    p.wire(choose, route)
    p.wire(name, route, 0, 1)
    bars_pack = p.obj(445, 500, "pack s s f f f s s i 0.", 9, 1)
    secs_pack = p.obj(660, 500, "pack s s f f s s i", 7, 1)
    p.wire(route, bars_pack, 0)
    p.wire(route, secs_pack, 1)
    for pack, base in ((bars_pack, 5), (secs_pack, 4)):
        p.wire(chosen, pack, 1, 1)  # the take on screen is what Inpaint regenerates
        p.wire(sources["prompt"], pack, 0, base)
        p.wire(sources["preset"], pack, 1, base + 1)
        p.wire(sources["seed"], pack, 0, base + 2)
    p.wire(bpm, bars_pack, 0, 4)
    for outlet, inlet in ((2, 2), (3, 3)):  # selection start / end in ms
        snapped = p.obj(445 + 110 * (outlet - 2), 440, SNAP, 2, 1, ["float"])
        seconds = p.obj(660 + 100 * (outlet - 2), 470, "/ 1000.", 2, 1, ["float"])
        p.wire(wave, snapped, outlet)
        p.wire(bpm, snapped, 0, 1)
        p.wire(snapped, bars_pack, 0, inlet)
        p.wire(wave, seconds, outlet)
        p.wire(seconds, secs_pack, 0, inlet)
    p.wire(bars_pack, p.obj(445, 530, "prepend /magnet/inpaint_bars", 2, 1))
    p.wire(p.boxes[-1]["box"]["id"], send)
    p.wire(secs_pack, p.obj(660, 530, "prepend /magnet/inpaint", 2, 1))
    p.wire(p.boxes[-1]["box"]["id"], send)
    grid = p.obj(445, 160, "!/ 60000.", 2, 1, ["float"])  # one beat in ms: waveform~'s grid
    p.wire(bpm, grid)
    p.wire(grid, p.obj(445, 180, "prepend grid", 2, 1))
    p.wire(p.boxes[-1]["box"]["id"], wave)


def _play(p: Patch, live: bool) -> None:
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
