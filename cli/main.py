"""`magnet-rt`: run the daemon, render from the shell, inspect and steer a running daemon.

stdout carries only results (written paths, or JSON with --json); progress, logs and errors go to stderr.
Exit codes: 0 ok, 1 request failed, 2 usage error, 3 daemon unreachable, 130 interrupted (request cancelled).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import fields
from typing import Any

import protocol as P
from clients import errors as E
from clients.client import AudioAssembler, MagnetClient, RequestStream, build_result, source_from_file

from .endless import OPTION_FLAGS, add_generate_options, add_render_options, generate_fields, run_endless
from .output import SUBTYPES, output_paths, summary, write_takes
from .progress import make_reporter

DEBUG_ENV = "MAGNET_RT_DEBUG"
log = logging.getLogger("magnet_rt.cli")
ROOT_EXAMPLES = """\
examples:
  magnet-rt serve                                            # start the daemon on the demo model (`serve -h`)
  magnet-rt generate "warm rhodes chords, 84 bpm" --preset live --seed 1 -o out.wav
  magnet-rt generate "dark techno" --variations 3 -o techno.wav   # techno.wav techno-2.wav techno-3.wav
  magnet-rt inpaint loop.wav --start 2.0 --end 4.0 "snare fill" --preset live --seed 2 -o fill.wav
  magnet-rt continue loop.wav "same groove, add bass" --duration 12 -o longer.wav
  magnet-rt generate "ambient pad" --play                    # hear it while it streams in
  magnet-rt status                                           # queue, device, last decoding step
"""
GENERATE_EXAMPLES = """\
examples:
  magnet-rt generate "warm rhodes chords, 84 bpm" --preset live --seed 1 -o out.wav
  magnet-rt generate "lofi drums" --duration 4 --param decoding_steps=[10,1,1,1] --json
  magnet-rt generate "dark techno" --prompt "dark techno, no kick" --variations 2 -o t.wav
  magnet-rt generate "lofi" --preset live --rescore 0.8 -o r.wav      # daemon started with --rescorer
  magnet-rt generate "lofi" --hybrid 2 --duration 10 -o h.wav         # first 2 s by MusicGen
  magnet-rt generate "slow ambient drift" --duration 120 -o long.wav  # long-form, window by window
  magnet-rt generate "deep house" --endless --play -o live.wav        # until Ctrl-C; live.wav grows

With several outputs (prompts x variations) the takes are written to OUT, then OUT-2, OUT-3, ...
(out.wav, out-2.wav, ...). Output i is prompt i // variations, variation i % variations. A file that exists
is not overwritten: the command stops before rendering unless --force is given.
"""
INPAINT_EXAMPLES = """\
examples:
  magnet-rt inpaint in.wav --start 2.0 --end 4.0 "snare fill" --preset live --seed 2 -o out.wav
  magnet-rt inpaint /srv/loops/beat.wav --start 1 --end 1.5 "crash" --by-path -o out.wav
  magnet-rt inpaint verse.wav --start-bar 4 --end-bar 6 --bpm 90 "drum fill" -o out.wav

The region [START, END) is regenerated; the rest of the clip (up to 10 minutes) is kept sample for sample.
In bars: --start-bar/--end-bar count bars from the downbeat (--downbeat SECONDS, default 0; bar 0 starts
there), at --bpm with --beats-per-bar (default 4); fractions are beats (4.5 = bar 4, beat 3). Each edge is
a whole sample. Several takes: out.wav, out-2.wav, ...
"""
CONTINUE_EXAMPLES = """\
examples:
  magnet-rt continue in.wav "same groove, add bass" --duration 12 -o out.wav

--duration is the length added after the clip (any length up to 600 s; default: the model's segment).
The clip is kept sample for sample. Several takes: out.wav, out-2.wav, ...
"""
FIELD_FLAGS = {"duration_s": "--duration", "start_s": "--start", "end_s": "--end", "seed": "--seed",
               "start_bar": "--start-bar", "end_bar": "--end-bar", "bpm": "--bpm", "beats_per_bar": "--beats-per-bar",
               "downbeat_s": "--downbeat",
               "variations": "--variations", "preset": "--preset", "model": "--model", "prompt": "PROMPT",
               "prompts": "--prompt", "params": "--param", "source": "INPUT", "chunk_s": "--chunk", **OPTION_FLAGS}
PARAM_KEYS = tuple(f.name for f in fields(P.DecodeParams))
RENDER_COMMANDS = ("generate", "inpaint", "continue")  # their errors name FIELD_FLAGS' options


class UsageError(Exception):
    """Bad arguments found after parsing; exit 2 with the message."""


class _ListDevices(argparse.Action):
    """Like --version: acts as soon as it is parsed, before required positionals are checked."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the audio output devices and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from clients.audition import list_devices

        try:
            list_devices()
        except E.AudioUnavailable as exc:
            parser.exit(E.EXIT_FAILED, f"error: {exc}\n")
        parser.exit(0)


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    root = argparse.ArgumentParser(prog="magnet-rt", description=ROOT_EXAMPLES, formatter_class=fmt,
                                   epilog="Exit codes: 0 ok, 1 request failed, 2 usage error, 3 daemon "
                                          "unreachable, 130 interrupted. MAGNET_RT_DEBUG=1 shows tracebacks.")
    root.add_argument("--version", action="version",
                      version=f"magnet-rt {P.package_version()} (protocol {P.PROTOCOL_VERSION})")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--connect", metavar="ENDPOINT",
                      default=os.environ.get(P.ENV_ENDPOINT) or P.DEFAULT_ENDPOINT,
                      help=f"daemon endpoint (env {P.ENV_ENDPOINT}; default %(default)s)")
    conn.add_argument("--server-key", metavar="FILE", help="daemon's CurveZMQ public key file (or Z85 key)")
    conn.add_argument("--timeout", metavar="SECONDS", type=float, default=2.5,
                      help="wait this long for a reply before retrying or giving up (default %(default)s)")
    conn.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    conn.add_argument("-q", "--quiet", action="store_true", help="no progress or notes on stderr")

    render = argparse.ArgumentParser(add_help=False)
    render.add_argument("--preset", metavar="NAME", help="decoding preset, e.g. live (default: the daemon's)")
    render.add_argument("--seed", type=int, metavar="N", help="base seed (default: the daemon picks one)")
    render.add_argument("--variations", type=int, metavar="N", default=1, help="takes per prompt (1-8)")
    render.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a decoding parameter, VALUE as JSON; keys: {', '.join(PARAM_KEYS)}")
    render.add_argument("--model", metavar="NAME", help="model to use (default: the daemon's)")
    render.add_argument("--chunk", type=float, metavar="SECONDS", help="audio chunk length on the wire")
    render.add_argument("-o", "--output", metavar="OUT.wav", default="out.wav",
                        help="where to write (default %(default)s; more takes: OUT-2.wav, ...); an existing file "
                             "is never overwritten without --force")
    render.add_argument("--force", action="store_true", help="overwrite OUT.wav (and OUT-2.wav, ...) if they exist")
    render.add_argument("--subtype", choices=SUBTYPES, default="FLOAT", help="WAV sample format (default FLOAT)")
    render.add_argument("--loudness", type=float, metavar="LUFS",
                        help="normalise each take to this loudness, e.g. -14 (peaks kept under -1 dBFS)")
    render.add_argument("--play", action="store_true",
                        help="play take 1 as it streams in; then n/p/r/q steps through the takes")
    render.add_argument("--output-device", metavar="DEVICE", help="audio output device (index or name)")
    render.add_argument("--list-devices", action=_ListDevices)
    add_render_options(render)

    def add(name: str, help_: str, parents: list, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=parents, description=description or help_,
                              formatter_class=fmt)

    sub.add_parser("serve", help="run the daemon (all arguments go to it; `magnet-rt serve -h`)", add_help=False)
    sub.add_parser("train", help="train or fine-tune a MAGNeT LM on captioned audio (`magnet-rt train -h`)",
                   add_help=False)
    sub.add_parser("keys", help="make a CurveZMQ key pair for the daemon (`magnet-rt keys -h`)", add_help=False)
    p = add("generate", "render music from a text prompt", [conn, render], GENERATE_EXAMPLES)
    p.add_argument("prompt", metavar="PROMPT", help="text description")
    p.add_argument("--prompt", dest="more_prompts", action="append", default=[], metavar="PROMPT",
                   help="another prompt rendered in the same batch (repeatable)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="output length (default: the model's segment; longer: long-form, up to 600)")
    add_generate_options(p)
    for name, text, examples in (("inpaint", "regenerate a region of a clip", INPAINT_EXAMPLES),
                                 ("continue", "extend a clip", CONTINUE_EXAMPLES)):
        p = add(name, text, [conn, render], examples)
        p.add_argument("input", metavar="INPUT", help="audio file (WAV, FLAC, ...)")
        p.add_argument("prompt", metavar="PROMPT", help="text description of the whole clip")
        p.add_argument("--by-path", action="store_true",
                       help="send the file's absolute path for the daemon to read, not its samples")
        if name == "inpaint":
            p.add_argument("--start", type=float, metavar="SECONDS", help="region start")
            p.add_argument("--end", type=float, metavar="SECONDS", help="region end (exclusive)")
            p.add_argument("--start-bar", type=float, metavar="BARS", help="region start in bars from the downbeat")
            p.add_argument("--end-bar", type=float, metavar="BARS", help="region end in bars (exclusive)")
            p.add_argument("--bpm", type=float, help="tempo of --start-bar/--end-bar")
            p.add_argument("--beats-per-bar", type=int, metavar="N", help="beats in a bar (default 4)")
            p.add_argument("--downbeat", type=float, metavar="SECONDS", help="where bar 0 starts (default 0)")
        else:
            p.add_argument("--duration", type=float, metavar="SECONDS",
                           help="seconds added after the clip (up to 600; default: the model's segment)")
    add("status", "show what the daemon is doing", [conn])
    add("models", "list the daemon's models", [conn])
    add("ping", "check that the daemon answers; show its version, models and presets", [conn])
    p = add("cancel", "cancel a request (of this connection: ids are per connection)", [conn])
    p.add_argument("id", metavar="ID")
    p = add("load", "make a model resident", [conn])
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--keep-alive", type=float, metavar="SECONDS",
                   help="unload after this long unused (negative: never; 0: when idle)")
    p = add("unload", "release a model", [conn])
    p.add_argument("model", metavar="MODEL")
    return root


# --- render commands -------------------------------------------------------------------------------------------
def _params(items: list[str]) -> dict[str, Any] | None:
    params = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or key not in PARAM_KEYS:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE with KEY one of {', '.join(PARAM_KEYS)}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw  # a bare word, e.g. span_arrangement=stride1
    return params or None


def _stream(args: argparse.Namespace, client: MagnetClient) -> RequestStream:
    if args.loudness is not None and not -70.0 <= args.loudness <= 0.0:
        raise UsageError(f"--loudness {args.loudness:g}: must be between -70 and 0 LUFS")
    render = {"preset": args.preset, "seed": args.seed, "variations": args.variations, "params": _params(args.param),
                  "model": args.model, "chunk_s": args.chunk, "stream": P.Stream(progress=not args.quiet),
                  "rescore": args.rescore}
    if args.command == "generate":
        prompts = [args.prompt, *args.more_prompts]
        one = len(prompts) == 1
        return client.generate(prompts[0] if one else None, prompts=None if one else prompts,
                               duration_s=args.duration, **render, **generate_fields(args))
    bars = _bars(args) if args.command == "inpaint" else {}
    if not os.path.isfile(args.input):
        raise UsageError(f"INPUT {args.input!r}: no such file")
    try:
        source = source_from_file(args.input, by_path=args.by_path)
    except RuntimeError as exc:  # soundfile cannot read it
        raise UsageError(f"INPUT {args.input!r}: cannot read it as audio ({exc})") from None
    if args.command == "inpaint":
        prompt = P.prompt_with_tempo(args.prompt, bars.get("bpm"))  # a beat-grid model plays it (README)
        return client.inpaint(source, args.start, args.end, prompt, **bars, **render)
    return client.continue_(source, args.prompt, duration_s=args.duration, **render)


def _bars(args: argparse.Namespace) -> dict[str, Any]:
    """The inpaint region in bars, or {} for seconds; exactly one of the two must be complete."""
    bars = {"start_bar": args.start_bar, "end_bar": args.end_bar, "bpm": args.bpm,
            "beats_per_bar": args.beats_per_bar, "downbeat_s": args.downbeat}
    in_bars = all(bars[k] is not None for k in ("start_bar", "end_bar", "bpm"))
    in_seconds = args.start is not None and args.end is not None
    if in_bars == in_seconds or (in_seconds and any(v is not None for v in bars.values())):
        raise UsageError("give the region as --start and --end (seconds), or as --start-bar, --end-bar and --bpm")
    return bars if in_bars else {}


def _refuse_overwrite(args: argparse.Namespace) -> None:
    """Check, before anything is sent, that the takes will not overwrite files (unless --force)."""
    if args.force:
        return
    takes = 1 if getattr(args, "endless", False) else args.variations * (1 + len(getattr(args, "more_prompts", [])))
    existing = [str(p) for p in output_paths(args.output, takes) if p.exists()]
    if existing:
        raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass --force to "
                         "overwrite, or -o to write elsewhere")


def cmd_render(args: argparse.Namespace, client: MagnetClient) -> int:
    audition = None
    if args.play:
        from clients.audition import Audition, Player

        device = int(args.output_device) if (args.output_device or "").isdigit() else args.output_device
        audition = Audition(Player(device))
    stream = _stream(args, client)  # checks the arguments; sends nothing yet
    _refuse_overwrite(args)
    reporter = make_reporter(args.quiet)
    stream.on_cancel = lambda: (reporter.stop(), print("interrupted: cancelling the request ...", file=sys.stderr))
    if getattr(args, "endless", False):
        return run_endless(args, client, stream, reporter, audition)
    asm, t0, windowed = AudioAssembler(), time.monotonic(), False
    try:
        with reporter:
            for msg in stream:
                reporter.event(msg)
                windowed = windowed or isinstance(msg, P.Window)
                if isinstance(msg, P.AudioChunk) and msg.TYPE == "audio":
                    if windowed and msg.seq == 0:
                        reporter.note(f"first audio after {time.monotonic() - t0:.2f} s (long-form)")
                    x = asm.add(msg)
                    if audition is not None:
                        audition.on_chunk(msg.variation, x, msg.sample_rate, msg.last)
    except KeyboardInterrupt:
        stream.close()  # sends cancel and waits for the end, unless the stream already did (Ctrl-C in a wait)
        print(f"cancelled {stream.id}" if stream.terminal is not None else "the daemon did not confirm the "
              "cancel", file=sys.stderr)
        return E.EXIT_INTERRUPTED
    finally:
        stream.close()  # on any other error too: never leave the request running
    if not isinstance(stream.terminal, P.Done):
        print("error: the request was cancelled (by another client or the daemon)", file=sys.stderr)
        return E.EXIT_FAILED
    result = build_result(stream.id, asm, stream.terminal)
    paths = write_takes(result, args.output, args.subtype, args.loudness)
    print(summary(result, paths) if args.json else "\n".join(map(str, paths)), flush=True)
    if audition is not None:
        from clients.audition import tty_keys

        audition.finish(result.audio, result.sample_rate, tty_keys())
    return E.EXIT_OK


# --- daemon queries -------------------------------------------------------------------------------------------
def _plain(msg: P.Event) -> dict[str, Any]:
    d = msg.to_dict()
    for key in ("v", "type", "id"):
        d.pop(key, None)
    return d


def cmd_query(args: argparse.Namespace, client: MagnetClient) -> int:
    if args.command == "ping":
        welcome = client.hello()
        t0 = time.perf_counter()
        client.ping()
        rtt_ms = (time.perf_counter() - t0) * 1000
        if args.json:
            print(json.dumps({"endpoint": client.endpoint, "rtt_ms": rtt_ms, **_plain(welcome)}))
        else:
            print(f"{client.endpoint}: alive, pong in {rtt_ms:.1f} ms; daemon {welcome.daemon_version}, protocol "
                  f"{welcome.protocol_version}, {welcome.sample_rate} Hz\n"
                  f"models: {', '.join(welcome.models)} (default {welcome.default_model})\n"
                  f"presets: {', '.join(welcome.presets)}")
        return E.EXIT_OK
    reply = {"status": client.status, "models": client.models, "cancel": lambda: client.cancel(args.id),
             "load": lambda: client.load(args.model, args.keep_alive),
             "unload": lambda: client.unload(args.model)}[args.command]()
    if args.json:
        print(json.dumps(_plain(reply)))
    elif isinstance(reply, P.StatusReply):
        last = f"{time.time() - reply.last_step_at:.1f} s ago" if reply.last_step_at else "none yet"
        print(f"device {reply.device}; model {reply.model or '-'}; running {reply.running}; "
              f"uptime {reply.uptime_s:.0f} s; last decoding step {last}")
        for q in reply.queue:
            print(f"  {q.state:8} {q.type:9} {q.id}  {q.elapsed_s:6.1f} s{'  (yours)' if q.own else ''}")
    elif isinstance(reply, P.ModelsReply):
        for m in reply.models:
            flags = ("loaded" if m.loaded else "-") + (" default" if m.name == reply.default_model else "")
            print(f"{m.name}\t{flags}\t{m.segment_s:g} s\t{m.sample_rate} Hz")
    elif isinstance(reply, P.LoadReply):
        print(f"{reply.model} loaded ({reply.load_s:.1f} s)")
    elif isinstance(reply, P.UnloadReply):
        print(f"{reply.model} unloaded")
    else:
        print(f"cancelling {reply.target} ({reply.state})")
    return E.EXIT_OK


# --- entry point ---------------------------------------------------------------------------------------------
def _delegate(command: str, argv: list[str]) -> int:
    try:
        if command == "serve":
            from .serve import main as entry
        elif command == "train":
            from magnet_rt.train.cli import main as entry
        else:
            from daemon.keys import main as entry
    except ImportError as exc:
        print(f"error: `magnet-rt {command}` is not installed here ({exc})", file=sys.stderr)
        return E.EXIT_FAILED
    return int(entry(argv) or 0)


def _run(argv: list[str]) -> int:
    if argv and argv[0] in ("serve", "keys", "train"):
        return _delegate(argv[0], argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for -h/--version
        return exc.code if isinstance(exc.code, int) else E.EXIT_USAGE
    if args.command in ("serve", "keys", "train"):  # reached only via options before the command
        return _delegate(args.command, [])
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    try:
        client = MagnetClient(args.connect, args.timeout, server_public_key=args.server_key,
                              client_name="magnet-rt-cli")
    except ValueError as exc:
        raise UsageError(f"--server-key: {exc}") from None
    with client:
        if args.command in ("generate", "inpaint", "continue"):
            return cmd_render(args, client)
        return cmd_query(args, client)


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except UsageError as exc:
        print(f"magnet-rt: error: {exc}", file=sys.stderr)
        return E.EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return E.EXIT_INTERRUPTED
    except E.ClientError as exc:
        if debug:
            log.exception("client error")
        code, text = E.describe(exc, FIELD_FLAGS if argv and argv[0] in RENDER_COMMANDS else None)
        print(text, file=sys.stderr)
        return code
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}\n  Run again with {DEBUG_ENV}=1 for the "
              "traceback, and report it.", file=sys.stderr)
        return E.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
