"""The generated Max patch and Max for Live device (clients/max) checked against a catalogue of Max facts, each
with its source in Max's reference, and the Max window's transcript derived from the patch's route/print chain.
No Max or Live runs here: this is the patch's JSON, the bridge's forms it must send, and magnet_live.js run by
node against a stand-in for the Live API."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest
from test_osc_support import REPO

from clients.osc import OPTIONS, REQUESTS, forms

MAX = REPO / "clients" / "max"
REF = "https://docs.cycling74.com/max8/refpages/"
LOM = "https://docs.cycling74.com/apiref/lom/"


@dataclass(frozen=True)
class Fact:
    ins: int | None  # None: depends on the arguments (checked by `args_io`)
    outs: int | None
    source: str


CATALOGUE = {  # object or maxclass -> inlets, outlets, where Max's reference says so
    "udpsend": Fact(1, 0, REF + "udpsend"), "udpreceive": Fact(1, 1, REF + "udpreceive"),
    "route": Fact(2, None, REF + "route"), "print": Fact(1, 0, REF + "print"), "prepend": Fact(2, 1, REF + "prepend"),
    "append": Fact(2, 1, REF + "append"), "pack": Fact(None, 1, REF + "pack"), "pak": Fact(None, 1, REF + "pak"),
    "unpack": Fact(1, None, REF + "unpack"), "t": Fact(1, None, REF + "trigger"), "gate": Fact(2, None, REF + "gate"),
    "counter": Fact(5, 4, REF + "counter"), "sprintf": Fact(None, 1, REF + "sprintf"),
    "tosymbol": Fact(1, 1, REF + "tosymbol"), "buffer~": Fact(1, 2, REF + "buffer~"),
    "groove~": Fact(3, 2, REF + "groove~"), "sig~": Fact(1, 1, REF + "sig~"), "*~": Fact(2, 1, REF + "times~"),
    "dac~": Fact(2, 0, REF + "dac~"), "plugout~": Fact(2, 0, REF + "plugout~"), "plugin~": Fact(2, 2, REF + "plugin~"),
    "loadbang": Fact(1, 1, REF + "loadbang"), "live.thisdevice": Fact(1, 3, REF + "live.thisdevice"),
    "live.path": Fact(1, 3, REF + "live.path"), "live.observer": Fact(2, 2, REF + "live.observer"),
    "random": Fact(2, 1, REF + "random"), "+": Fact(2, 1, REF + "plus"), "!/": Fact(2, 1, REF + "rdiv"),
    "/": Fact(2, 1, REF + "div"), "expr": Fact(None, 1, REF + "expr"), "sel": Fact(None, None, REF + "select"),
    "zl": Fact(2, 2, REF + "zl"), "js": Fact(None, None, REF + "js"),
    "textedit": Fact(1, 4, REF + "textedit"), "textbutton": Fact(1, 3, REF + "textbutton"),
    "umenu": Fact(1, 3, REF + "umenu"), "number": Fact(1, 2, REF + "number"), "flonum": Fact(1, 2, REF + "flonum"),
    "toggle": Fact(1, 1, REF + "toggle"), "waveform~": Fact(5, 6, REF + "waveform~"),
    "message": Fact(2, 1, REF + "message"), "comment": Fact(1, 0, REF + "comment"),
}
FACTS = [  # what else the patch relies on, each with its source
    ("textedit keymode 1: Return outputs the text instead of adding a newline", REF + "textedit"),
    ("textedit bang: outputs the typed text (bangmode 0)", REF + "textedit"),
    ("textedit output starts with the word text; route text strips it, leaving bang when empty", REF + "route"),
    ("udpreceive port <int>: listen on another port (one per instance)", REF + "udpreceive"),
    ("udpreceive @defer 1: output in the low-priority queue", REF + "udpreceive"),
    ("buffer~ replace <path>: read a file, resizing the buffer", REF + "buffer~"),
    ("waveform~ grid <ms>: spacing of the vertical grid lines", REF + "waveform~"),
    ("waveform~ outlets 2 and 3: selection start and end in ms", REF + "waveform~"),
    ("gate 1 1: one outlet, open; 0 in the left inlet closes it", REF + "gate"),
    ("gate 2 1: the left inlet picks outlet 1 or 2", REF + "gate"),
    ("route passes an unmatched message whole out of its rightmost outlet", REF + "route"),
    ("print <name> shows `<name>: <message>` in the Max window", REF + "print"),
    ("Track.clip_slots, ClipSlot.has_clip, ClipSlot.create_audio_clip(path) (Live 12.0.5+)", LOM + "clipslot"),
    ("Clip.warping, Clip.add_warp_marker, Clip.loop_end, Clip.end_marker", LOM + "clip"),
]


def patches() -> dict[str, dict]:
    data = (MAX / "magnet.amxd").read_bytes()
    (size,) = struct.unpack("<I", data[28:32])
    return {"maxpat": json.loads((MAX / "magnet.maxpat").read_text())["patcher"],
            "amxd": json.loads(data[32:32 + size])["patcher"]}


def boxes(patcher: dict) -> dict[str, dict]:
    return {b["box"]["id"]: b["box"] for b in patcher["boxes"]}


def name_of(box: dict) -> str:
    return box.get("text", "").split(" ")[0] if box["maxclass"] == "newobj" else box["maxclass"]


def args_io(box: dict) -> tuple[int, int]:
    """Inlets and outlets that an object's arguments decide (Max's reference of each)."""
    words = box["text"].split()
    name, args = words[0], [w for w in words[1:] if not w.startswith("@")]
    if name == "route":
        return 2, len(args) + 1
    if name in ("pack", "pak"):
        return len(args), 1
    if name == "unpack":
        return 1, len(args)
    if name == "t":
        return 1, len(args)
    if name == "gate":
        return 2, int(args[0])
    if name == "sprintf":
        return len(re.findall(r"%[a-z]+", box["text"])) or 1, 1
    if name == "expr":
        return max(int(n) for n in re.findall(r"\$[if](\d)", box["text"])), 1
    if name == "js":
        source = (MAX / args[0]).read_text()
        return (int(re.search(r"^inlets = (\d+);", source, re.M).group(1)),
                int(re.search(r"^outlets = (\d+);", source, re.M).group(1)))
    return box["numinlets"], box["numoutlets"]


def wires(patcher: dict) -> list[tuple[str, int, str, int]]:
    return [(*line["patchline"]["source"], *line["patchline"]["destination"]) for line in patcher["lines"]]


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_every_object_is_in_the_catalogue_with_its_inlets_and_outlets(kind):
    patcher = patches()[kind]
    for box in boxes(patcher).values():
        fact = CATALOGUE.get(name_of(box))
        assert fact is not None, f"{name_of(box)} is not in the catalogue of Max facts: add it with its source"
        ins, outs = args_io(box) if box["maxclass"] == "newobj" else (fact.ins, fact.outs)
        expected = (ins if fact.ins is None else fact.ins, outs if fact.outs is None else fact.outs)
        assert (box["numinlets"], box["numoutlets"]) == expected == (ins, outs), box
    b = boxes(patcher)
    for src, outlet, dst, inlet in wires(patcher):
        assert outlet < b[src]["numoutlets"] and inlet < b[dst]["numinlets"], (b[src], b[dst])
    assert all(source.startswith("https://docs.cycling74.com/") for _, source in FACTS)


def reachable(patcher: dict, start: str, outlet: int | None = None) -> set[str]:
    out: dict[str, list[str]] = {}
    for src, o, dst, _ in wires(patcher):
        if src != start or outlet is None or o == outlet:
            out.setdefault(src, []).append(dst)
    seen, todo = set(), [start]
    for _ in range(10_000):  # bounded walk
        if not todo:
            break
        for nxt in out.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find(patcher: dict, pred) -> list[dict]:
    return [b for b in boxes(patcher).values() if pred(b)]


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_enter_sends_the_prompt_and_an_empty_prompt_is_refused_visibly(kind):
    patcher = patches()[kind]
    (edit,) = find(patcher, lambda b: b["maxclass"] == "textedit")
    assert edit["keymode"] == 1  # Return outputs the text (Max's default adds a newline and outputs nothing)
    (send,) = find(patcher, lambda b: b.get("text") == "Send")
    assert edit["id"] in reachable(patcher, send["id"])
    empty = find(patcher, lambda b: b["maxclass"] == "message" and "type a prompt first" in b.get("text", ""))
    (route_bang,) = find(patcher, lambda b: b.get("text") == "route bang")
    assert empty and empty[0]["id"] in reachable(patcher, route_bang["id"], 0)
    (error_box,) = find(patcher, lambda b: b["maxclass"] == "message" and not b.get("text"))
    assert error_box["id"] in reachable(patcher, empty[0]["id"])
    for label in ("Generate", "Loop", "Variations", "Inpaint"):
        (button,) = find(patcher, lambda b, label=label: b.get("text") == label)
        b = boxes(patcher)
        (order,) = [d for src, _, d, _ in wires(patcher) if src == button["id"]]
        out = {(o, b[d].get("text", b[d]["maxclass"]), i) for src, o, d, i in wires(patcher) if src == order}
        assert b[order]["text"] == "t b b" and out == {(1, "textedit", 0), (0, "gate 1 1", 1)}, out
        (gate,) = [d for src, o, d, _ in wires(patcher) if src == order and o == 0]
        assert any(b[x].get("text", "").startswith("udpsend") for x in reachable(patcher, gate))  # only via the gate


def _pack_arity(text: str) -> int:
    return len(text.split()) - 1


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_requests_have_a_form_the_bridge_accepts(kind):
    """Each pack feeding `prepend /magnet/<verb>` has as many atoms as one of the verb's forms, plus the options
    `loudness X normalize N` where appended."""
    patcher = patches()[kind]
    b = boxes(patcher)
    sent = set()
    for head in find(patcher, lambda x: x.get("text", "").startswith("prepend /magnet/")):
        address = head["text"].split()[1]
        sent.add(address)
        feeders = [src for src, _, dst, _ in wires(patcher) if dst == head["id"]]
        (feeder,) = feeders
        options = 0
        if b[feeder]["text"] == "append":
            options = 2 * len(OPTIONS)
            appended = [src for src, _, dst, inlet in wires(patcher) if dst == feeder and inlet == 1]
            assert [b[s]["text"] for s in appended] == ["loudness $1 normalize $2"]
            (feeder,) = [src for src, _, dst, inlet in wires(patcher) if dst == feeder and inlet == 0]
        assert _pack_arity(b[feeder]["text"]) in {len(f) for f in forms(REQUESTS[address])}, (address, b[feeder])
        assert options in (0, 2 * len(OPTIONS))
    assert {"/magnet/generate", "/magnet/loop", "/magnet/variations", "/magnet/inpaint", "/magnet/inpaint_bars"} <= sent
    assert set(OPTIONS) == {"loudness", "normalize"}


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_each_instance_listens_on_its_own_port_and_names_it_in_its_ids(kind):
    patcher = patches()[kind]
    (rnd,) = find(patcher, lambda x: x.get("text", "").startswith("random "))
    after = {boxes(patcher)[i].get("text", "") for i in reachable(patcher, rnd["id"])}
    assert "prepend port" in after and any(t.startswith("udpreceive ") for t in after)
    names = [t for t in after if t.startswith("sprintf symout ")]
    assert len(names) == 5 and all(t.endswith("@%ld") for t in names), names  # 4 actions + cancel all
    assert any(t == "sprintf symout *@%ld" for t in names)
    (receive,) = find(patcher, lambda x: x.get("text", "").startswith("udpreceive"))
    assert "@defer 1" in receive["text"]


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_inpaint_snaps_to_beats_and_sends_bars(kind):
    patcher = patches()[kind]
    b = boxes(patcher)
    (snap_expr, _) = [x for x in b.values() if x.get("text", "").startswith("expr int(")]
    ms, bpm = 1312.0, 123.4  # a selection edge at 1312 ms: beat 2.698 -> beat 3 -> bar 0.75
    expr = snap_expr["text"][5:].replace("$f1", str(ms)).replace("$f2", str(bpm))
    assert eval(expr) == 0.75  # noqa: S307 - the patch's own arithmetic, evaluated as Max's expr would
    (bars_pack,) = find(patcher, lambda x: x.get("text", "").startswith("pack s s f f f s s i"))
    assert bars_pack["id"] in reachable(patcher, snap_expr["id"])
    assert any(b[i].get("text") == "prepend /magnet/inpaint_bars" for i in reachable(patcher, bars_pack["id"]))
    (switch,) = find(patcher, lambda x: x.get("text") == "gate 2 1")
    dests = {o: b[d]["text"] for s, o, d, _ in wires(patcher) if s == switch["id"]}
    assert dests[0].startswith("pack s s f f f") and dests[1].startswith("pack s s f f s s i")
    (grid,) = find(patcher, lambda x: x.get("text") == "prepend grid")
    (wave,) = find(patcher, lambda x: x["maxclass"] == "waveform~")
    assert wave["id"] in reachable(patcher, grid["id"])


# ---- the Max window, derived from the route/print chain ------------------------------------------------------------
def _atom(word: str):
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


def max_print(patcher: dict, message: list) -> list[str]:
    """What the Max window shows for a reply arriving at udpreceive: follow `route` (a match strips the address;
    no match passes the message whole out of the rightmost outlet) to every `print`."""
    b = boxes(patcher)
    (receive,) = [x for x in b.values() if x.get("text", "").startswith("udpreceive")]
    out: list[str] = []
    todo = [(receive["id"], 0, message)]
    for _ in range(1000):
        if not todo:
            break
        src, outlet, msg = todo.pop()
        for s, o, dst, _ in wires(patcher):
            if s != src or o != outlet:
                continue
            words = b[dst].get("text", "").split()
            if words[:1] == ["print"]:
                out.append(f"{words[1]}: " + " ".join(_show(a) for a in msg))
            elif words[:1] == ["route"]:
                keys = words[1:]
                todo.append((dst, keys.index(msg[0]), msg[1:]) if msg[0] in keys else (dst, len(keys), msg))
    return out


def _show(a) -> str:
    if isinstance(a, float):
        return f"{a:.6f}".rstrip("0") if not a.is_integer() else f"{a:.0f}."
    return f'"{a}"' if isinstance(a, str) and " " in a else str(a)


def readme_transcript() -> list[tuple[list, str]]:
    """(reply as it arrives, line the README says the Max window prints) from clients/max/README.md."""
    text = (MAX / "README.md").read_text()
    pairs = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if m := re.match(r"← (/magnet/\S+ .*)$", line):
                pairs.append([_atom(w) for w in shlex.split(m.group(1))])
            elif line.startswith("magnet: "):
                pairs[-1] = (pairs[-1], line)
    return pairs


@pytest.mark.parametrize("kind", ["maxpat", "amxd"])
def test_readme_transcript_is_what_the_patch_prints(kind):
    pairs = readme_transcript()
    assert len(pairs) >= 4 and all(isinstance(p, tuple) for p in pairs), pairs
    for message, line in pairs:
        assert max_print(patches()[kind], message) == [line]
    assert max_print(patches()[kind], ["/magnet/progress", "gen0@24122", 0.5]) == []  # progress is not printed


# ---- magnet_live.js under node, against a stand-in Live API -------------------------------------------------------
FAKE_LIVE = r"""
const calls = [];
const slots = [1, 1, 0, 0];  // has_clip per slot of the device's track
global.max = { os: process.argv[3] };
global.outlet = (...a) => calls.push(["outlet", ...a]);
global.LiveAPI = function (path) {
  this.path = path;
  this.get = (p) => {
    if (path === "this_device" && p === "canonical_parent") return ["id", 7];
    if (path === "id 7" && p === "has_audio_input") return [1];
    if (path === "id 7" && p === "clip_slots") return slots.flatMap((_, i) => ["id", 100 + i]);
    if (path.startsWith("id 10") && p === "has_clip") return [slots[Number(path.slice(3)) - 100]];
    if (path.startsWith("id 10") && p === "clip") return ["id", 200];
    throw new Error("unexpected get " + path + " " + p);
  };
  this.getcount = (p) => (path === "id 7" && p === "clip_slots" ? slots.length : 0);
  this.call = (...a) => calls.push(["call", path, ...a]);
  this.set = (...a) => calls.push(["set", path, ...a]);
};
const live = require(process.argv[2]);
live.take("C:/Users/ana/AppData/Local/magnet rt/take.wav", 3.9, 123.4);
console.log(JSON.stringify(calls));
"""


@pytest.mark.parametrize("os_name, path", [("windows", "C:\\Users\\ana\\AppData\\Local\\magnet rt\\take.wav"),
                                           ("macintosh", "C:/Users/ana/AppData/Local/magnet rt/take.wav")])
def test_live_script_puts_the_take_in_the_first_empty_slot_warped_at_the_tempo(tmp_path, os_name, path):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail("node not found: install it with `apt-get install -y nodejs`", pytrace=False)
    (tmp_path / "fake.js").write_text(FAKE_LIVE)
    run = subprocess.run([node, str(tmp_path / "fake.js"), str(MAX / "magnet_live.js"), os_name],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    calls = json.loads(run.stdout)
    beats = 3.9 * 123.4 / 60
    assert calls[0] == ["call", "id 102", "create_audio_clip", path]  # slots 0 and 1 hold clips
    assert ["set", "id 200", "warping", 1] in calls
    assert ["call", "id 200", "add_warp_marker", {"beat_time": beats, "sample_time": 3.9}] in calls
    assert ["set", "id 200", "loop_end", beats] in calls and calls[-1] == ["outlet", 0, "clip", 2]
    assert "js magnet_live.js" in json.dumps(patches()["amxd"]) and "magnet_live" not in json.dumps(
        patches()["maxpat"])
