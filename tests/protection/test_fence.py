"""The memory barrier: balanced (the semaphore ends where it started), per thread, usable from any thread."""

from __future__ import annotations

import ctypes
import threading

from protection import fence as F


def sem_value() -> int:
    v = ctypes.c_int(-1)
    F._LIBC.sem_getvalue(ctypes.c_void_p(F._LOCAL.ptr), ctypes.byref(v))
    return v.value


def test_fence_posts_and_takes_back_its_own_semaphore() -> None:
    for _ in range(1000):
        F.fence()
    assert sem_value() == 0  # every post was taken back: each fence ran its acquire


def test_each_thread_has_its_own_semaphore() -> None:
    ptrs: list[int] = []
    values: list[int] = []

    all_recorded = threading.Barrier(4)

    def worker() -> None:
        for _ in range(100):
            F.fence()
        ptrs.append(F._LOCAL.ptr)
        values.append(sem_value())
        # stay alive until every thread has recorded its pointer: a thread that ended could free its
        # semaphore and the next thread's could then be allocated at the same address
        all_recorded.wait(30)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({*ptrs, F._LOCAL.ptr}) == 5 and values == [0, 0, 0, 0]
