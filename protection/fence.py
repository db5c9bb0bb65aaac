"""A full memory barrier from Python, for the shared-memory ring, recorder and statistics on weakly ordered CPUs.

The event ring, the sample recorder and the statistics block publish records between processes by writing the
fields first and a sequence word last (and readers read the sequence word first, the fields after). x86 keeps
stores in order and loads in order, so that is enough there; ARM (the Raspberry Pi) may reorder both, so the
writer could publish a sequence word before the fields it covers, or the reader see the fields from before the
sequence word it checked.

:func:`fence` orders every memory access before it before every access after it, for all observers: it posts a
thread-private POSIX semaphore and takes it back (``sem_post`` then ``sem_trywait`` through ``ctypes``). glibc
implements those with a release RMW followed by an acquire RMW on the same word (on AArch64 ``STLXR``/``CASL``
then ``LDAXR``/``CASA``; an acquire is never reordered before an earlier release), which together act as a full
barrier; on x86 they are locked instructions, full barriers anyway. POSIX lists both among the functions that
synchronise memory. Cost: about 1 µs (two foreign calls).

Writers call it between the fields and the sequence word; readers between reading the sequence word and the
fields (and again before re-checking it). The semaphore is per thread (``threading.local``) so a post is always
followed by a successful take in the same thread, whose acquire is what orders the later accesses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_SEM_T_BYTES = 64  # sizeof(sem_t) is 32 on 64-bit glibc (16 on 32-bit); room to spare


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name, use_errno=True)
    for fn in ("sem_init", "sem_post", "sem_trywait"):
        getattr(lib, fn).restype = ctypes.c_int
    lib.sem_init.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint)
    lib.sem_post.argtypes = (ctypes.c_void_p,)
    lib.sem_trywait.argtypes = (ctypes.c_void_p,)
    return lib


_LIBC = _libc()
_SEM_POST = _LIBC.sem_post
_SEM_TRYWAIT = _LIBC.sem_trywait


class _ThreadSem(threading.local):
    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(_SEM_T_BYTES)  # malloc-aligned: enough for sem_t
        if _LIBC.sem_init(self.buf, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")
        self.ptr = ctypes.addressof(self.buf)


_LOCAL = _ThreadSem()


def fence() -> None:
    """Full memory barrier (see the module doc). Any thread; never blocks."""
    p = _LOCAL.ptr
    _SEM_POST(p)
    _SEM_TRYWAIT(p)
