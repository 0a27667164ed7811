"""Loaded by the trainer under test: any socket to a non-loopback address fails and is recorded."""

import ipaddress
import os
import socket

_connect = socket.socket.connect
_record = os.environ.get("NETGUARD_RECORD", "/tmp/netguard.log")


def _guarded(self, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            with open(_record, "a") as log:
                log.write(f"{host}\n")
            raise OSError(f"network blocked by the test: {address}")
    return _connect(self, address)


socket.socket.connect = _guarded  # type: ignore[method-assign]
_resolve = socket.getaddrinfo


def _no_dns(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if host not in (None, "localhost", "127.0.0.1", "::1") and not str(host).startswith("127."):
        with open(_record, "a") as log:
            log.write(f"dns:{host}\n")
        raise socket.gaierror(f"name resolution blocked by the test: {host}")
    return _resolve(host, *args, **kwargs)


socket.getaddrinfo = _no_dns
