"""Real faults for a broker in a child process: a file size limit
(RLIMIT_FSIZE) that makes SQLite's writes fail with EFBIG, as on a full disk,
and file modes that bind root too."""

from __future__ import annotations

import re
import sys

#: Runs ``python -m trio_esper`` with RLIMIT_FSIZE lowered to argv[1] bytes (0: unlimited) and
#: SIGXFSZ ignored, so a write past the limit fails with EFBIG, as on a full disk. With argv[2]
#: "obey", a root process first drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capset(2)), so
#: file modes bind it as they bind any other user: a 0444 file is read-only to it.
BOOTSTRAP = """
import ctypes, resource, runpy, signal, sys
limit, modes = int(sys.argv.pop(1)), sys.argv.pop(1)
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if modes == "obey":
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~0b110  # CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2)
    data[0].permitted &= ~0b110
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
sys.argv[0] = "trio_esper"
runpy.run_module("trio_esper", run_name="__main__", alter_sys=True)
"""
#: Appears in SQLite's reason for a failed write (EFBIG is reported as an I/O error).
WRITE_FAILED = re.compile(r"disk I/O error|database or disk is full")


def broker_command(fsize_limit: int = 0, obey_file_modes: bool = False) -> list[str]:
    """The broker's command through BOOTSTRAP, with ``fsize_limit`` and, if
    ``obey_file_modes``, without root's bypass of file modes."""
    modes = "obey" if obey_file_modes else "as-is"
    return [sys.executable, "-c", BOOTSTRAP, str(fsize_limit), modes]


#: The topic whose rows and purge fail in :func:`faulty_store_command`'s broker.
FAULTY_TOPIC = "faultytopic1"

#: Runs ``python -m trio_esper`` with faults of a kind the SQLite writer does not expect (a
#: ``RuntimeError``: a bug, or a value SQLite cannot take, as a ``retry`` past 2^63-1 once was):
#: building a row for an event of the topic argv[1], purging that topic, and every retention
#: pass, run here every 0.05 s.
UNEXPECTED_STORE_FAULTS = """
import runpy, sys
from trio_esper.history import sqlite
topic = sys.argv.pop(1)
row, maintain = sqlite._row, sqlite.SqliteHistory._maintain_sync
def faulty_row(record):
    if record.topic == topic:
        raise RuntimeError("injected fault in a row")
    return row(record)
def faulty_maintain(self, item):
    if item.topic == topic:
        raise RuntimeError("injected fault in a purge")
    return maintain(self, item)
def faulty_prune(self):
    raise RuntimeError("injected fault in retention")
sqlite._row = faulty_row
sqlite.SqliteHistory._maintain_sync = faulty_maintain
sqlite.SqliteHistory._prune = faulty_prune
sqlite.PRUNE_INTERVAL_SECONDS = 0.05
sys.argv[0] = "trio_esper"
runpy.run_module("trio_esper", run_name="__main__", alter_sys=True)
"""


def faulty_store_command() -> list[str]:
    """The broker's command through UNEXPECTED_STORE_FAULTS, for FAULTY_TOPIC."""
    return [sys.executable, "-c", UNEXPECTED_STORE_FAULTS, FAULTY_TOPIC]
