"""What ACME keeps on disk, in ``--acme-storage``: blocking file operations.

Layout (the directory 0700, every file 0600, each written whole to a
temporary name and renamed over the old one, so a reader never sees half)::

    account.key                  the ACME account's private key (PEM)
    certificate.pem              the certificate's private key, then its chain
                                 (one file: key and certificate change together)
    order.lock                   held (flock) by the one process that orders
    challenges/http-01/TOKEN     an HTTP-01 key authorization, while pending
    challenges/tls-alpn-01/NAME  a TLS-ALPN-01 key and certificate, while pending

Every process serving the same names (``--threads``, or nodes sharing the
directory) reads the certificate and the pending challenges from here: a
validation may reach any of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

#: RFC 8555, section 8.1: a token is base64url, no padding; a file name as it is.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")


class Storage:
    """The directory ``path``, made 0700 if missing; its mode is tightened
    to 0700 if looser.

    Raises:
        OSError: the directory cannot be made or read.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.stat().st_mode & 0o077:
            self.path.chmod(0o700)
        self._lock: int | None = None

    @property
    def certificate_path(self) -> Path:
        return self.path / "certificate.pem"

    def read(self, name: str) -> bytes | None:
        """The file ``name``, or ``None`` if it does not exist."""
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Replace the file ``name`` by ``data`` at once (0600, synced)."""
        target = self.path / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()

    def modified(self) -> int | None:
        """The certificate file's modification time (ns), ``None`` if missing."""
        try:
            return self.certificate_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def try_lock(self) -> bool:
        """Whether this process holds the order lock now (taking it if free).
        Held until :meth:`unlock` or the process ends (the kernel frees it)."""
        if self._lock is not None:
            return True
        descriptor = os.open(self.path / "order.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._lock = descriptor
        return True

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def http_token_name(token: str) -> str | None:
    """Where an HTTP-01 token's key authorization is kept; ``None`` if
    ``token`` is not a token (so a request path never names another file)."""
    return f"challenges/http-01/{token}" if _TOKEN.fullmatch(token) else None


def tls_alpn_name(server_name: str) -> str:
    """Where a TLS-ALPN-01 challenge certificate for ``server_name`` is kept
    (a name checked as a DNS name by the configuration, or by the caller)."""
    return f"challenges/tls-alpn-01/{server_name}.pem"
