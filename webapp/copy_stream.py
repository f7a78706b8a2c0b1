"""A `COPY … TO STDOUT` read as an iterator of byte blocks, with bounded memory, that a closing reader cancels.

psycopg2's copy_expert blocks until the whole COPY is written to a file object, so it runs in a thread of its own
and writes into a queue of at most QUEUE_BLOCKS blocks: a slow reader holds the COPY (and the server's query)
back instead of letting rows pile up in memory. close() cancels the statement on the server at once
(PQcancel, safe from another thread) and stops the thread.
"""

import queue
import threading

BLOCK_BYTES = 64 * 1024  # copy_expert writes one row at a time: rows are gathered into blocks of this size
QUEUE_BLOCKS = 8  # at most 8 blocks (512 KiB) wait for the reader
PUT_POLL_SECONDS = 0.1  # how soon a writer blocked on a full queue notices that the reader went away
JOIN_SECONDS = 5
_END = object()


class ReaderGone(Exception):
    """The reader closed the stream: copy_expert stops at the row it was writing."""


class CopyStream:
    """Iterate for the COPY's output in blocks; `rows` is its row count once it ended; close() always."""

    def __init__(self, conn, statement: bytes | str):
        self._conn = conn
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_BLOCKS)
        self._closed = threading.Event()
        self._buffer = bytearray()
        self._ended = False
        self.rows: int | None = None
        self._thread = threading.Thread(target=self._copy, args=(statement,), name="sluice-copy", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """copy_expert's file: called in the copy thread with each row."""
        self._buffer += data
        if len(self._buffer) >= BLOCK_BYTES:
            self._put(bytes(self._buffer))
            self._buffer.clear()

    def _put(self, item) -> None:
        while True:
            if self._closed.is_set():
                raise ReaderGone
            try:
                self._queue.put(item, timeout=PUT_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _copy(self, statement) -> None:
        try:
            with self._conn.cursor() as cursor:
                cursor.copy_expert(statement, self)
                self.rows = cursor.rowcount
            if self._buffer:
                self._put(bytes(self._buffer))
            self._put(_END)
        except ReaderGone:
            return
        except BaseException as error:  # handed to the reader, which raises it in the request's thread
            try:
                self._put(error)
            except ReaderGone:
                return

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    @property
    def complete(self) -> bool:
        """Every row was read."""
        return self._ended and self.rows is not None

    def close(self) -> None:
        """Stop: a COPY still running is cancelled on the server; returns once the thread ended."""
        self._closed.set()
        if self._thread.is_alive():
            self._conn.cancel()
        self._thread.join(JOIN_SECONDS)
        if self._thread.is_alive():
            raise RuntimeError(f"the COPY thread did not stop within {JOIN_SECONDS} s of its cancel")
