"""Serve the sample sources (posts, comments, items.csv) on 127.0.0.1 until killed: `python -m sluice_devtools.serve_samples PORT`."""

import signal
import sys
import threading

from sluice_devtools import sample_data
from sluice_devtools.source_server import SourceServer

API_RECORDS = 100
COMMENTS = 200
CSV_ROWS = 1000
CSV_BAD_EVERY = 125


def serve(port: int = 0) -> SourceServer:
    server = SourceServer(port=port)
    server.serve_json("posts", sample_data.posts(API_RECORDS))
    server.serve_json("comments", sample_data.comments(COMMENTS), page_size=50)
    server.serve_bytes("items.csv", sample_data.csv_bytes(CSV_ROWS, bad_every=CSV_BAD_EVERY))
    return server


def main(argv: list[str]) -> int:
    server = serve(int(argv[0]) if argv else 0).start()
    print(server.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
