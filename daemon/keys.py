"""CurveZMQ keys: `magnet-rt keys DIR` writes a server key pair; `serve --curve-secret FILE` uses it.

Binding anything but loopback or `ipc://` needs CURVE (PROTOCOL.md §2) unless the user says `--insecure`.
Clients need only the server's public key (`DIR/server.key`); the daemon does not check client keys.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

import zmq
import zmq.auth

LOCAL_HOSTS = {"localhost"}


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address; anything else is reachable from outside."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name or '*': not loopback
        return False


def create_server_keys(directory: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write `server.key` (public, give it to clients) and `server.key_secret` (mode 0600) into `directory`."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    out = Path(directory)
    public, secret = out / "server.key", out / "server.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise FileExistsError(f"{public} or {secret} already exists; pass --force to replace the key pair")
    out.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(out, "server")
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load_server_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a `*.key_secret` file; ValueError if it holds no secret key."""
    public, secret = zmq.auth.load_certificate(str(path))
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the server.key_secret file, not server.key)")
    return public, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="magnet-rt keys", description="Create a CurveZMQ key pair for the daemon.",
        epilog="example: magnet-rt keys ~/.config/magnet-rt/keys && "
               "magnet-rt serve --bind tcp://0.0.0.0:5555 --curve-secret ~/.config/magnet-rt/keys/server.key_secret")
    parser.add_argument("directory", metavar="DIR", help="folder for server.key and server.key_secret")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        public, secret = create_server_keys(args.directory, force=args.force)
    except (OSError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(str(public))
    print(f"secret key: {secret} (keep it private; pass it to serve --curve-secret)", file=sys.stderr)
    return 0
