"""`magnet-rt serve`: the daemon (daemon.server) with the OSC bridge (clients.osc) beside it in one process.

The daemon itself knows no client: the bridge joins as a `daemon.server.FrontEnd`, its options
(`--osc`, `--osc-reply-port`, `--osc-client`, `--output-dir`, `--output-ttl`) on the daemon's parser, and it
starts, as a client of the bound endpoint, once the daemon serves (`--osc` given).
"""

from __future__ import annotations

import argparse

from clients.osc import OscBridge, add_osc_arguments, start_osc_bridge
from clients.output_dir import OutputDir
from daemon.server import main as serve_main


class OscFrontEnd:
    """The OSC bridge as a front end of `serve`: its folder of WAV takes cleaned by the bridge."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_osc_arguments(parser)
        parser.add_argument("--output-dir", default=None, metavar="DIR",
                            help="folder for the OSC bridge's WAV results (default ~/.cache/magnet-rt/outputs)")
        parser.add_argument("--output-ttl", type=float, default=3600.0, metavar="SECONDS",
                            help="WAV results older than this are deleted (default 3600)")

    def start(self, args: argparse.Namespace, endpoint: str) -> OscBridge | None:
        if not args.osc:
            return None
        bridge = start_osc_bridge(args, endpoint, OutputDir(args.output_dir, ttl_s=args.output_ttl))
        print(f"magnet-rt osc on {args.osc} (replies to port {args.osc_reply_port})", flush=True)
        return bridge


def main(argv: list[str] | None = None) -> int:
    return serve_main(argv, front_ends=[OscFrontEnd()])
