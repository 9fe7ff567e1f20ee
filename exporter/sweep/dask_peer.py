"""Is the peer at ``sweep --scheduler`` a Dask scheduler? Asked in bounded time and bytes, before Dask
itself talks to it.

Dask's client trusts the first frame it reads: its 8-byte length header is allocated whole (garbage
there asked for 6.35 EiB) and a peer that accepts the connection but never answers held a sweep for
about ten minutes despite the 30 s connect timeout. A Dask server sends its handshake as soon as it
accepts a connection, so this module connects itself, reads that one message with a deadline and a
size bound, and checks that it decodes as Dask's handshake (msgpack frames). Only then does the
sweep hand the address to Dask.
"""
from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlsplit

from ...kernel.errors import UserInputError

#: how long the peer has to connect and send its handshake
PROBE_SECONDS = 15.0
#: a Dask handshake is a few hundred bytes; anything near this is not one
MAX_HANDSHAKE_BYTES = 1 << 16


def _fail(address: str, why: str) -> UserInputError:
    return UserInputError(f"the Dask scheduler at {address} {why}; check --scheduler (tcp://HOST:PORT of a "
                          "running 'dask scheduler'), or drop it to run on this machine")


def _read_exactly(sock: socket.socket, n: int, deadline: float, address: str, seconds: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _fail(address, f"did not send its handshake within {seconds:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            raise _fail(address, f"did not send its handshake within {seconds:g} s") from None
        except OSError as e:
            raise _fail(address, f"closed the connection ({e.strerror or e})") from None
        if not chunk:
            raise _fail(address, "closed the connection before its handshake")
        buf += chunk
    return bytes(buf)


def probe_scheduler(address: str, seconds: float | None = None) -> None:
    """Raise a one-line :class:`UserInputError` unless ``address`` (``tcp://host:port``) answers with a
    Dask handshake of bounded size within ``seconds`` (default :data:`PROBE_SECONDS`)."""
    seconds = PROBE_SECONDS if seconds is None else seconds
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or not parts.hostname:
        raise _fail(address, "is not a tcp://HOST:PORT address")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise _fail(address, "names no port")
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=seconds)
    except OSError as e:
        raise _fail(address, f"cannot be reached ({e.strerror or e})") from None
    with sock:
        (size,) = struct.unpack("<Q", _read_exactly(sock, 8, deadline, address, seconds))
        if not 8 <= size <= MAX_HANDSHAKE_BYTES:
            raise _fail(address, f"sent a first message of {size:,} bytes, which is no Dask handshake")
        body = _read_exactly(sock, size, deadline, address, seconds)
    if not _is_handshake(body):
        raise _fail(address, "sent a first message that is no Dask handshake")


def _is_handshake(body: bytes) -> bool:
    """The frames Dask's TCP comm packs (a count, the lengths, the frames) holding a msgpack header."""
    import msgpack
    try:
        (count,) = struct.unpack_from("<Q", body)
        if not 1 <= count <= 64:
            return False
        lengths = struct.unpack_from(f"<{count}Q", body, 8)
        if 8 * (count + 1) + sum(lengths) > len(body):
            return False
        first = body[8 * (count + 1):8 * (count + 1) + lengths[0]]
        return isinstance(msgpack.loads(first, raw=False), dict)
    except (struct.error, ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException,
            UnicodeDecodeError):
        return False
