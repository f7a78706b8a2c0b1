"""The checkpoint is an id a record of the source had, spelled as it was (issue 22): store_raw picks the batch's
latest id, advance_checkpoint keeps the later of it and the stored one, and the incremental read sends it as is.

One order of ids everywhere (sql/functions.sql, sluice_id_order): ids of ASCII digits only compare by their
value, the same value spelled with fewer leading zeros later ('007' < '07' < '7'); every other id by its bytes,
before every integer."""

import io
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests

from sluice import settings, sources, warehouse
from sluice.staging import StageWriter
from tests import staged


def staged_ids(run_id: str, ids) -> io.BytesIO:
    out = io.BytesIO()
    writer = StageWriter(out, run_id, "items")
    for number, source_id in enumerate(ids, start=1):
        writer.record(number, source_id, {"id": source_id, "name": f"item {number}", "value": str(number)},
                      where=f"line {number + 1}")
    out.seek(0)
    return out


def checkpoint_after(conn, run_id: str, ids, *, full_refresh: bool = False) -> str | None:
    """store_raw, then advance_checkpoint, of one batch: the checkpoint's id as stored."""
    stored = warehouse.store_raw(conn, "items", staged_ids(run_id, ids), run_id=run_id, lock_timeout_seconds=5,
                                 kind="csv")
    warehouse.advance_checkpoint(conn, "items", run_id=run_id, processed=stored.stored, lock_timeout_seconds=5,
                                 full_refresh=full_refresh)
    return warehouse.read_checkpoint(conn, "items")


PADDED = [f"{n:04}" for n in range(1, 13)]
BATCHES = {
    "zero-padded": (PADDED, "0012"),
    "zero-padded-shuffled": (PADDED[5:] + PADDED[:5], "0012"),
    "padded-only-equal-values": (["007", "07"], "07"),
    "mixed-padding": (["1", "01", "10", "9"], "10"),
    # two records whose ids have the same value: the one with fewer leading zeros, whatever the batch's order
    "same-value-spellings": (["007", "7", "07"], "7"),
    "same-value-spellings-reversed": (["7", "07", "007"], "7"),
    "zeros": (["00", "0", "000"], "0"),
    # a space, a sign or an exponent make an id text: never later than an integer of the source
    "text-among-integers": (["1", "10", "9", " 7", "1e3", "-3", "+4", "007", "7"], "10"),
    "text-only": ([" 7", "1e3", "-3", "+4"], "1e3"),
    "text-ids-compare-by-bytes": (["b-9", "b-10"], "b-9"),
    # beyond the 30 digits numeric comparison used to stop at
    "long-integers": (["9" * 39, "1" + "0" * 39], "1" + "0" * 39),
}


@pytest.mark.parametrize("batch", BATCHES)
def test_the_checkpoint_is_the_latest_staged_id_spelled_as_staged(database_url, batch):
    ids, latest = BATCHES[batch]
    with psycopg.connect(database_url) as conn:
        assert checkpoint_after(conn, "run-1", ids) == latest
    assert latest in ids


def test_the_checkpoint_only_moves_forward_and_keeps_each_spelling(database_url):
    with psycopg.connect(database_url) as conn:
        assert checkpoint_after(conn, "run-1", PADDED) == "0012"
        assert checkpoint_after(conn, "run-2", ["0010", "0011", "0012", "0013", "0014", "0015"]) == "0015"
        assert checkpoint_after(conn, "run-3", PADDED[:5]) == "0015"  # an older or shorter read: it stays
        assert checkpoint_after(conn, "run-4", ["x", "y"]) == "0015"  # text ids are before every integer
        assert checkpoint_after(conn, "run-5", ["16"]) == "16"
        assert checkpoint_after(conn, "run-6", ["0003"], full_refresh=True) == "0003"  # a full refresh sets it


LATER = [
    (("0012", "0009"), "0012"),
    (("0009", "0012"), "0012"),
    (("12", "0012"), "12"),
    (("0012", "12"), "12"),
    (("99", "100"), "100"),
    (("x", "5"), "5"),
    (("5", "x"), "5"),
    (("b-9", "b-10"), "b-9"),
    ((" 7", "-3"), "-3"),
    (("9" * 39, "1" + "0" * 39), "1" + "0" * 39),
    ((None, "007"), "007"),
    (("007", None), "007"),
]


@pytest.mark.parametrize("pair, later", LATER, ids=[f"{a}-{b}" for (a, b), _ in LATER])
def test_sluice_later_id_returns_one_of_its_arguments_as_spelled(database_url, pair, later):
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select sluice_later_id(%s, %s)", pair).fetchone()[0] == later


# ---- the incremental read sends the stored text

class TextIdApi:
    """A loopback API whose records have zero-padded string ids and whose id_gte filter compares them as text."""

    def __init__(self, ids):
        records = [{"id": source_id, "title": f"post {source_id}", "userId": 1, "body": "b"} for source_id in ids]
        self.queries: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                api.queries.append(query)
                since = query.get("id_gte", [""])[0]
                body = json.dumps([r for r in records if r["id"] >= since]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/posts"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def read_since(api: TextIdApi, since: str | None, tmp_path) -> list[str]:
    """The API source read through its kind's stage() from `since`: the staged ids."""
    source = sources.Source(name="items", kind="api", conn_id="etl_api", endpoint="posts",
                            mapping=settings.DEFAULT_API_MAPPING, since_param="id_gte")
    out = io.BytesIO()
    with requests.Session() as session:
        request = sources.FetchRequest(session=session, url=api.url, run_id="run-2", uri="file:///s",
                                       settings=settings.load(), since=since, workdir=tmp_path / "downloads")
        source.reader().stage(source, request, out)
    return [line.source_id for line in staged.records(staged.decode(out.getvalue()))]


def test_the_incremental_read_asks_from_the_stored_id_and_gets_the_newer_records(database_url, tmp_path):
    api = TextIdApi([f"{n:04}" for n in range(1, 16)])
    try:
        with psycopg.connect(database_url) as conn:
            checkpoint_after(conn, "run-1", PADDED)
            since = warehouse.read_checkpoint(conn, "items")
        read = read_since(api, since, tmp_path)
    finally:
        api.close()

    assert api.queries[-1]["id_gte"] == ["0012"]
    assert read == ["0012", "0013", "0014", "0015"]


def reference_order(source_id: str):
    """The order of ids as the docstring states it, in Python: the reference the SQL is held to."""
    if source_id.isascii() and source_id.isdigit():
        return (1, int(source_id), -len(source_id), b"")
    return (0, 0, 0, source_id.encode())


def random_id(rng) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return "0" * rng.randrange(4) + str(rng.randrange(10 ** rng.randrange(1, 45)))
    if kind == 1:
        return "0" * rng.randrange(1, 4)
    if kind == 2:
        return rng.choice([" ", "+", "-", "", "x", "b-"]) + str(rng.randrange(1000)) + rng.choice(["", "e3", " ", "a"])
    return str(rng.randrange(10 ** rng.randrange(1, 5)))


def test_the_order_and_the_spelling_agree_with_the_reference_on_random_ids(database_url):
    rng = random.Random(22)
    with psycopg.connect(database_url) as conn:
        for run in range(12):
            batch = list({random_id(rng): None for _ in range(rng.randrange(1, 60))})
            assert checkpoint_after(conn, f"run-{run}", batch, full_refresh=True) == max(batch, key=reference_order)
        pairs = [(random_id(rng), random_id(rng)) for _ in range(3000)]
        found = conn.execute("select sluice_later_id(a, b), sluice_integer_id(sluice_integer_id_key(a)) "
                             "from unnest(%s::text[], %s::text[]) with ordinality as p(a, b, n) order by n",
                             ([a for a, _ in pairs], [b for _, b in pairs])).fetchall()

    for (a, b), (later, spelled) in zip(pairs, found):
        assert later == max(a, b, key=reference_order), (a, b)
        assert spelled == (a if reference_order(a)[0] else None)
