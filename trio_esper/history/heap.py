"""What Python objects cost on the heap, for the memory budget that the
memory history and the topic catalog share (:mod:`.memory`, :mod:`..catalog`).

Pure: no trio. Each object is counted at the size ``sys.getsizeof`` reports,
rounded up as the allocator rounds it; containers are measured whole (their
over-allocation and the holes deletions leave in a dict included).
"""

from __future__ import annotations

import sys

#: pymalloc serves requests up to this size from 16-byte size classes.
SMALL_REQUEST_BYTES = 512
#: Above this, glibc's malloc maps whole pages (its default mmap threshold).
MMAP_THRESHOLD_BYTES = 128 << 10
PAGE_BYTES = 4096
#: A list or dict is two allocations (the object and its table), each rounded up.
CONTAINER_ROUNDING_BYTES = 16


def allocated_bytes(size: int) -> int:
    """Heap bytes an object of ``size`` bytes (as ``sys.getsizeof`` says)
    takes: pymalloc's 16-byte classes, glibc's 8-byte chunk header and
    16-byte alignment, or whole pages once malloc maps the block."""
    if size <= SMALL_REQUEST_BYTES:
        return (size + 15) & ~15
    if size < MMAP_THRESHOLD_BYTES:
        return (size + 8 + 15) & ~15
    return (size + 16 + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1)


def object_bytes(obj: object) -> int:
    """Heap bytes ``obj`` itself takes (not what it refers to)."""
    return allocated_bytes(sys.getsizeof(obj))


def container_bytes(container: object) -> int:
    """Heap bytes a list, dict or ``OrderedDict`` takes, its table and (for
    an ``OrderedDict``) its nodes included, not its items."""
    return allocated_bytes(sys.getsizeof(container)) + CONTAINER_ROUNDING_BYTES
