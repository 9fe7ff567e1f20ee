"""Debian files for the ARM64 kit: the pinned one, or — once Debian has replaced it — the current one,
proven the way apt proves it.

Debian's pool keeps only the newest update of a package, so a pin to a security update stops
resolving the day the next one lands. Then the package is looked up in the suites' signed indexes:
``InRelease`` (its signature checked with ``gpgv`` against the host's Debian archive keyring) names
the sha256 of ``Packages.xz``, which names the sha256 of the ``.deb``. Every byte used is still
checked against a hash, and the hash chain ends in Debian's signing key instead of a pin.
"""
from __future__ import annotations

import hashlib
import lzma
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ...kernel.errors import UserInputError

MIRROR = "https://deb.debian.org"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DOWNLOAD_TIMEOUT_S = 300
MAX_INDEX_BYTES = 64 << 20


class Gone(UserInputError):
    """The pinned file is no longer on the mirror (HTTP 404)."""


def fetch(url: str, sha256: str, folder: Path) -> Path:
    """Download ``url`` into ``folder`` and return the file, or refuse it unless its sha256 is ``sha256``."""
    dest = folder / url.rsplit("/", 1)[1]
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise Gone(f"{url} is gone from the mirror") from None
        raise UserInputError(f"could not download {url}: {e}") from None
    except OSError as e:   # no route, a timeout, a reset
        raise UserInputError(f"could not download {url}: {e}") from None
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise UserInputError(f"{url} is not the pinned file (sha256 {digest.hexdigest()}, pinned {sha256}); "
                             "refusing it")
    return dest


def fetch_package(entry: dict, folder: Path, say) -> Path:
    """The lock entry's ``.deb``: the pinned file, else the package's current one from the signed index
    of the entry's ``suites`` (searched in order) for its ``arch``."""
    try:
        return fetch(entry["url"], entry["sha256"], folder)
    except Gone:
        pass
    for suite in entry["suites"]:
        found = _lookup(suite, entry["arch"], entry["package"], folder)
        if found is not None:
            filename, sha256, version = found
            say(f"  {entry['package']}: the pinned file is gone from Debian's pool; taking {version} from the "
                f"signed {suite} index")
            return fetch(f"{MIRROR}/{suite.split('/dists/')[0]}/{filename}", sha256, folder)
    raise UserInputError(f"{entry['package']} ({entry['arch']}) is neither at its pinned address nor in the "
                         f"signed indexes of {', '.join(entry['suites'])}; refresh exporter/arm64/kit.lock.json")


_INDEXES: dict[tuple[str, str], dict[str, tuple[str, str, str]]] = {}


def _lookup(suite: str, arch: str, package: str, folder: Path) -> tuple[str, str, str] | None:
    if (suite, arch) not in _INDEXES:
        _INDEXES[(suite, arch)] = _packages(suite, arch, folder)
    return _INDEXES[(suite, arch)].get(package)


def _packages(suite: str, arch: str, folder: Path) -> dict[str, tuple[str, str, str]]:
    """``package -> (Filename, SHA256, Version)`` of a suite's signed ``main/binary-ARCH/Packages.xz``."""
    if shutil.which("gpgv") is None or not KEYRING.is_file():
        raise UserInputError("a pinned Debian file is gone and its replacement cannot be verified here: gpgv and "
                             f"{KEYRING} (Debian's gpgv and debian-archive-keyring packages) are needed")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        release = Path(tmp) / "InRelease"
        with urllib.request.urlopen(f"{MIRROR}/{suite}/InRelease", timeout=DOWNLOAD_TIMEOUT_S) as r:
            release.write_bytes(r.read(MAX_INDEX_BYTES))
        verified = Path(tmp) / "Release"
        check = subprocess.run(["gpgv", "--keyring", str(KEYRING), "--output", str(verified), str(release)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise UserInputError(f"{MIRROR}/{suite}/InRelease does not carry a valid Debian signature; refusing it")
        wanted = f"main/binary-{arch}/Packages.xz"
        sha256 = _release_sha256(verified.read_text(), wanted)
        with urllib.request.urlopen(f"{MIRROR}/{suite}/{wanted}", timeout=DOWNLOAD_TIMEOUT_S) as r:
            packed = r.read(MAX_INDEX_BYTES)
    if sha256 is None or hashlib.sha256(packed).hexdigest() != sha256:
        raise UserInputError(f"{suite}'s {wanted} does not match its signed Release file; refusing it")
    out: dict[str, tuple[str, str, str]] = {}
    for stanza in lzma.decompress(packed).decode("utf-8", "replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if {"Package", "Filename", "SHA256", "Version"} <= fields.keys():
            out[fields["Package"]] = (fields["Filename"], fields["SHA256"], fields["Version"])
    return out


def _release_sha256(release: str, path: str) -> str | None:
    """The sha256 the (verified) Release file gives for ``path``."""
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == path:
            return parts[0]
    return None
