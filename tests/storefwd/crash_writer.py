"""Child process of the crash tests (run as ``python -m tests.storefwd.crash_writer DB MODE``).

MODE ``write``: append readings forever; every third batch flush(), ack the committed seq for sink "cloud",
add an event whose message is that seq, then print the seq on stdout. The value of every row equals the seq
it gets (this process is the file's only writer and starts from ``last_seq()``), so the parent can check
every row after killing it with SIGKILL.
MODE ``hold``: open the store, print ``open``, keep it open until stdin closes.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from gateway.model import Event, ReadingBatch
from storefwd import Store

# mixed sizes: small commits go through the WAL, big ones are checkpointed straight into the file
SIZES = (1000, 20_000, 7, 60_000, 300)


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    with Store(path, commit_interval_ms=5) as store:
        if mode == "hold":
            print("open", flush=True)
            sys.stdin.read()
            return
        k = store.last_seq()
        for i, n in enumerate(itertools.cycle(SIZES), start=1):
            values = np.arange(k + 1, k + 1 + n, dtype=np.float64)
            store.put(
                ReadingBatch.of(values.astype(np.int64), (values % 7).astype(np.int32), values, 0), 60.0
            )
            k += n
            if i % 3 == 0:
                seq = store.flush(60.0)
                store.ack("cloud", seq)
                store.add_event(Event(ts=seq, kind="audit", message=str(seq), priority=0))
                print(seq, flush=True)


if __name__ == "__main__":
    main()
