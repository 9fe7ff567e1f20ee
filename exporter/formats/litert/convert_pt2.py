"""model.pt2 -> a raw .tflite, run by the LiteRT converter's own Python (see converter.py).

This script imports nothing of bsconv-export: it runs in the converter environment, whose
pins (litert-torch's) cannot share bsconv-export's. It is handed only the ``model.pt2`` the
export itself just wrote into the bundle being built, never a file someone sent. Before
anything is imported (it runs with ``-S``, so not even a ``.pth`` file of site-packages), every
socket connection but the loopback's is refused: conversion needs no network and must not use one.

Usage: python convert_pt2.py MODEL.pt2 OUT.tflite BATCH,CHANNELS,HEIGHT,WIDTH
"""
import socket
import sys


def _refuse_network(allowed: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")) -> None:
    """Every IPv4/IPv6 connection to a host outside ``allowed`` fails before the system call."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def host_of(address):
        return address[0] if isinstance(address, tuple) else None

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and host_of(address) not in allowed:
            raise OSError(f"bsconv-export's LiteRT conversion makes no network connections (to {address})")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and host_of(address) not in allowed:
            return 111   # ECONNREFUSED
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


def main(argv: list[str]) -> int:
    _refuse_network()
    import site
    site.main()    # run with -S: the environment's site-packages (and any .pth there) only from here on
    pt2, out, shape = argv[1], argv[2], [int(v) for v in argv[3].split(",")]
    import torch
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    program = torch.export.load(pt2)
    import litert_torch
    edge = litert_torch.convert(program.module(), (torch.zeros(shape),))
    edge.export(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
