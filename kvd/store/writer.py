# -*- test-case-name: tests.store.test_writer -*-
"""
The storage's writer thread: LMDB write transactions and their flushes run
here, off the reactor thread, one at a time and in the order given.

Why a thread: a commit with its fdatasyncs blocks for a millisecond on a quiet
disk and for tens of milliseconds when three nodes share one disk or a flush
carries a thousand keys; on the reactor thread every such wait is a stall
(no heartbeat, no client served).  LMDB and py-lmdb release the GIL inside
``mdb_txn_begin``, commit and sync, so the reactor runs meanwhile.

What it costs: each time the writer comes back from LMDB it needs the GIL,
and a busy reactor holds it until the interpreter's switch interval expires
(5 ms by default).  The node lowers the interval (kvd.tap) so that a write
waits for the GIL a fraction of the time it waits for the disk.

The owner (the storage, on the reactor thread) never touches what a job
reads while the job runs: the Ready loop does not apply, compact or write
while a write is outstanding (kvd.replica).  The result goes back through
``deliver`` (the node passes ``reactor.callFromThread``), so the owner hears
it on its own thread.  The thread starts at the first job, never before:
twistd opens and closes the store before it daemonizes, and a thread does
not cross ``fork``.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

Deliver = Callable[..., None]


class WriterThread:
    def __init__(self, deliver: Deliver, name: str = "kvd-storage-writer") -> None:
        self._deliver = deliver
        self._name = name
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def submit(self, work: Callable[[], None], then: Callable[[Optional[BaseException]], None]) -> None:
        """Run ``work()`` on the writer thread; ``then(error or None)`` is delivered to the owner's thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((work, then))

    def stop(self) -> None:
        """Let the jobs already given finish, then end the thread (their results are still delivered)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, then = job
            try:
                work()
            except BaseException as e:  # the owner decides (a storage error fail-stops the node)
                self._deliver(then, e)
            else:
                self._deliver(then, None)
