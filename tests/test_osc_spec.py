"""protocol/OSC.md against clients/osc.py's dispatcher, argument parsing, and the Max and Pd patches' ports and
addresses. No daemon needed."""

from __future__ import annotations

import json
import re
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from test_osc_support import REPO

from clients.osc import (
    DEFAULT_OSC,
    DEFAULT_REPLY_PORT,
    REPLIES,
    REQUESTS,
    OscBridge,
    OscError,
    OscJob,
    forms,
    osc_path,
    parse,
    reply_port,
)
from clients.output_dir import OutputDir
from magnet_rt.audio import bars_to_samples

SPEC = (REPO / "protocol" / "OSC.md").read_text()
MAX = REPO / "clients" / "max"
SEND_PORT = int(DEFAULT_OSC.rpartition(":")[2])


def table(title: str) -> dict[str, list[str]]:
    """Rows of the four-column table under the heading `title`: address -> the other columns."""
    section = SPEC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`/"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_request_table_matches_the_dispatcher():
    rows = table("3. Requests")
    assert set(rows) == set(REQUESTS)
    for address, (args, replies, _) in rows.items():
        assert (args.strip("`") if args != "—" else "") == REQUESTS[address], address
        assert set(re.findall(r"`(/magnet/\w+)`", replies)) <= set(REPLIES), address


def test_every_request_address_has_one_handler(tmp_path):
    bridge = OscBridge("tcp://127.0.0.1:1", "127.0.0.1:0", output=OutputDir(tmp_path))  # not started: binds nothing
    try:
        assert set(bridge.handlers) == set(REQUESTS)
    finally:
        bridge.close()


def test_lengths_are_whole_frames_of_the_daemons_welcome(tmp_path):
    """A request's length is rounded up to whole frames at the frame rate the daemon's welcome names, and its take
    is trimmed back to the exact musical length."""
    bridge = OscBridge("tcp://127.0.0.1:1", "127.0.0.1:0", output=OutputDir(tmp_path))
    try:
        values = parse("/magnet/generate", ("g", "p", "live", 1, 1, 123.4))
        job = OscJob(("127.0.0.1", 1), "g", "/magnet/generate", values, seed=1)
        rounded = {rate: bridge._frames(job, SimpleNamespace(frame_rate=rate)) for rate in (50, 75)}
    finally:
        bridge.close()
    assert rounded == {50: 98 / 50, 75: 146 / 75}  # 1 bar at 123.4 bpm is 1.9449 s
    assert job.samples(32000) == bars_to_samples(1, 123.4, 32000)


def test_reply_table_matches_the_bridge():
    rows = table("4. Replies")
    assert {a: r[0].strip("`") for a, r in rows.items()} == REPLIES


def test_ports_are_documented_first():
    ports = SPEC.split("## 2.", 1)[0]
    assert f"127.0.0.1:{SEND_PORT}" in ports and f"port {DEFAULT_REPLY_PORT}" in ports


def test_forms_and_parsing():
    assert forms(REQUESTS["/magnet/generate"]) == [
        [("id", "s"), ("prompt", "s"), ("preset", "s"), ("seed", "i")],
        [("id", "s"), ("prompt", "s"), ("preset", "s"), ("seed", "i"), ("duration_s", "f")],
        [("id", "s"), ("prompt", "s"), ("preset", "s"), ("seed", "i"), ("bars", "i"), ("bpm", "f")]]
    assert forms("") == [[]]
    v = parse("/magnet/generate", ("g", "pad", "live", 7.0, 4.0, float(np.float32(120.1))))  # as Pd sends them
    assert v == {"id": "g", "prompt": "pad", "preset": "live", "seed": 7, "bars": 4, "bpm": 120.1}
    assert bars_to_samples(v["bars"], v["bpm"], 32000) == bars_to_samples(4, 120.1, 32000)
    assert parse("/magnet/generate", ("g", "pad", "live", 1, 2))["duration_s"] == 2.0


def test_options_prompts_and_reply_routes():
    v = parse("/magnet/generate", ("g@9123", "pad", "live", 7, 4.0, 120.0, "normalize", 0.0, "loudness", -16.0))
    assert v == {"id": "g@9123", "prompt": "pad", "preset": "live", "seed": 7, "bars": 4, "bpm": 120.0,
                 "normalize": 0, "loudness": -16.0}
    assert parse("/magnet/loop", ("l", "pad", 1, 90.0, "live", 1, "loudness", -20))["loudness"] == -20.0
    assert parse("/magnet/generate", ("g", "@unconditioned", "live", 1))["prompt"] == ""
    assert parse("/magnet/ping", ("p@0",)) == {"id": "p@0"} and parse("/magnet/status", ()) == {}
    assert [reply_port(i, 40000, 9001) for i in ("g@9123", "g@0", "g", "a@b", "g@", "x@1@2")] == [
        9123, 40000, 9001, 9001, 9001, 2]


def test_a_tempo_in_bars_joins_the_prompt_unless_it_names_one():
    from protocol import prompt_with_tempo

    assert prompt_with_tempo(None, 120.0) is None and prompt_with_tempo("x", None) == "x"
    def prompt(address, *args):
        return OscJob(("127.0.0.1", 9001), "j", address, parse(address, args), seed=1).prompt

    assert prompt("/magnet/loop", "l", "warm pad", 2, 97.5, "live", 1) == "warm pad, 97.5 bpm"
    assert prompt("/magnet/generate", "g", "pad", "live", 7, 4, 120.0) == "pad, 120 bpm"
    assert prompt("/magnet/loop", "l", "techno at 130 BPM", 2, 97.5, "live", 1) == "techno at 130 BPM"
    assert prompt("/magnet/loop", "l", "@unconditioned", 1, 90.0, "live", 1) == ""  # stays unconditioned
    assert prompt("/magnet/generate", "g", "pad", "live", 7, 2.0) == "pad"  # seconds: no tempo to add
    assert prompt("/magnet/loop", "l", "pad", 1, 600.0, "live", 1) == "pad"  # beyond PROMPT_BPM_RANGE: not added
    # "names a tempo" is the engine's rule ("N bpm"), not the letters b-p-m anywhere
    assert prompt("/magnet/loop", "l", "bpm-heavy lofi", 1, 90.0, "live", 1) == "bpm-heavy lofi, 90 bpm"
    assert prompt("/magnet/loop", "l", "lofi 84bpm", 1, 90.0, "live", 1) == "lofi 84bpm"


def test_the_protocol_and_the_engine_read_a_prompt_tempo_alike():
    from magnet_rt.tempo import TEMPO_PHRASE
    from protocol import PROMPT_TEMPO_PHRASE

    assert (PROMPT_TEMPO_PHRASE.pattern, PROMPT_TEMPO_PHRASE.flags) == (TEMPO_PHRASE.pattern, TEMPO_PHRASE.flags)


def test_paths_are_sent_in_the_form_max_reads():
    """Max's buffer~ takes `C:/…` on Windows (forward slashes); POSIX paths pass unchanged."""
    assert osc_path("C:\\Users\\ana\\AppData\\x y.wav", windows=True) == "C:/Users/ana/AppData/x y.wav"
    assert osc_path("/home/ana/x y.wav", windows=False) == "/home/ana/x y.wav"


@pytest.mark.parametrize("address, args, words", [
    ("/magnet/nope", (), "unknown address"),
    ("/magnet/generate", ("g", "p", "live"), "takes 4 or 5 or 6 arguments, got 3"),
    ("/magnet/generate", ("g", "p", "live", "x"), "argument 4 (seed) must be an integer"),
    ("/magnet/generate", ("g", "p", "live", True), "argument 4 (seed)"),
    ("/magnet/generate", ("g", "p", "live", 1, float("nan")), "argument 5 (duration_s) must be a number"),
    ("/magnet/generate", ("", "p", "live", 1), "id must have 1 to 64"),
    ("/magnet/generate", ("g", "p", "live", 2**31), "seed must be in"),
    ("/magnet/variations", ("g", "p", "live", 1, 9), "count must be in"),
    ("/magnet/loop", ("g", "p", 65, 120.0, "live", 1), "bars must be in"),
    ("/magnet/loop", ("g", "p", 4, -1.0, "live", 1), "bpm must be in"),
    ("/magnet/ping", ("p", 1), "takes 0 or 1 arguments"),
    ("/magnet/ping", (1,), "argument 1 (id) must be a string"),
    ("/magnet/generate", ("g", "", "live", 1), "the prompt is empty"),
    ("/magnet/generate", ("g", "  ", "live", 1), "@unconditioned"),
    ("/magnet/inpaint", ("g", "/a.wav", 0, 1, "", "live", 1), "the prompt is empty"),
    ("/magnet/generate", ("g@65536", "p", "live", 1), "reply port"),
    ("/magnet/generate", ("g", "p", "live", 1, 2.0, "loudness"), "option 'loudness' needs a value"),
    ("/magnet/generate", ("g", "p", "live", 1, "loudness", 1.0), "loudness must be in [-70, 0]"),
    ("/magnet/generate", ("g", "p", "live", 1, "normalize", 2), "normalize must be in [0, 1]"),
    ("/magnet/generate", ("g", "p", "live", 1, "loudness", "x"), "argument 6 (loudness) must be a number"),
    ("/magnet/generate", ("g", "p", "live", 1, "loudness", -9.0, "gain", 1), "unknown option 'gain'"),
    ("/magnet/inpaint", ("g", "/a.wav", 0, 1, "p", "live", 1, "loudness", -9.0), "takes 7 arguments"),
])
def test_bad_arguments(address, args, words):
    with pytest.raises(OscError) as err:
        parse(address, args)
    assert words in err.value.message


# ---- Max --------------------------------------------------------------------------------------------------------
def amxd_patch() -> dict:
    data = (MAX / "magnet.amxd").read_bytes()
    assert data[:4] == b"ampf" and data[8:12] == b"aaaa" and data[12:16] == b"meta" and data[24:28] == b"ptch"
    (size,) = struct.unpack("<I", data[28:32])
    assert size == len(data) - 32
    return json.loads(data[32:])


@pytest.mark.parametrize("load", [lambda: json.loads((MAX / "magnet.maxpat").read_text()), amxd_patch],
                         ids=["maxpat", "amxd"])
def test_max_patch(load):
    patcher = load()["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    assert len(boxes) == len(patcher["boxes"])
    for line in patcher["lines"]:
        (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert outlet < boxes[src]["numoutlets"] and inlet < boxes[dst]["numinlets"], line
    texts = [b.get("text", "") for b in boxes.values()]
    assert [t for t in texts if t.startswith("udpsend")] == [f"udpsend 127.0.0.1 {SEND_PORT}"]
    assert [t for t in texts if t.startswith("udpreceive")] == [f"udpreceive {DEFAULT_REPLY_PORT} @defer 1"]
    routed = {w for t in texts if t.startswith("route /magnet") for w in t.split()[1:]}
    sent = {w for t in texts if not t.startswith("route") for w in t.split() if w.startswith("/magnet/")}
    assert routed <= set(REPLIES) and {"/magnet/done", "/magnet/progress", "/magnet/error"} <= routed
    assert sent <= set(REQUESTS) and {"/magnet/generate", "/magnet/loop", "/magnet/inpaint", "/magnet/variations",
                                      "/magnet/cancel"} <= sent
    classes = {b["maxclass"] for b in boxes.values()}
    assert {"waveform~", "textedit", "umenu"} <= classes
    assert any(t == "prepend replace" for t in texts) and any(t.startswith("buffer~ ") for t in texts)
    assert any(t.startswith("groove~ ") for t in texts) and any("loop 1" in t for t in texts)


def test_max_files_are_what_the_builder_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_patch", MAX / "build_patch.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.write(tmp_path)
    for name in ("magnet.maxpat", "magnet.amxd"):
        assert (tmp_path / name).read_bytes() == (MAX / name).read_bytes(), f"run clients/max/build_patch.py ({name})"
    assert "live.observer tempo" in json.dumps(amxd_patch())


# ---- Pd -----------------------------------------------------------------------------------------------------------
def test_pd_patch_ports_and_addresses():
    text = (REPO / "clients" / "pd" / "magnet.pd").read_text()
    assert f"connect 127.0.0.1 {SEND_PORT};" in text
    objects = [line for line in text.split(";\n") if line.startswith(("#X obj", "#X msg", "#X text"))]
    index = {name: next(k for k, o in enumerate(objects) if o.endswith(name))
             for name in ("netsend -u -b", "oscparse", "makefilename %s@0")}
    assert f"#X connect {index['netsend -u -b']} 1 {index['oscparse']} 0" in text  # replies come back via netsend
    routed = re.search(r"route (accepted[^;]*);", text).group(1).split()
    assert {f"/magnet/{w}" for w in routed} <= set(REPLIES)
    for verb in re.findall(r"magnet-send (\w+)", text):
        assert f"/magnet/{verb}" in REQUESTS


def test_continue_states_what_it_keeps_and_its_ramp_as_the_engine_makes_it():
    """OSC.md says the file is kept whole; PROTOCOL.md gives the length of the ramp that joins the new part."""
    from magnet_rt.pipeline import DEFAULT_FADE_S

    assert "Keep the file whole" in table("3. Requests")["/magnet/continue"][2]
    protocol = (REPO / "protocol" / "PROTOCOL.md").read_text().split("### `continue`", 1)[1].split("\n|", 1)[0]
    assert f"{round(DEFAULT_FADE_S * 1000)} ms ramp" in " ".join(protocol.split())
