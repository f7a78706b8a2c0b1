"""JSONStream against the reference, json.loads, on random documents split into chunks at random places."""

import json
import math
import random

import pytest

from sluice.json_stream import Item, JSONStream, JSONStreamError

WHITESPACE = " \t\n\r"
# number spellings json.loads reads as the same value several ways, or not exactly as a float: each must keep its text
NUMBERS = ["0", "-0", "-0.0", "1", "1.0", "1.50", "1e5", "1E+5", "2.5e-3", "1e400", "-1e400", "1e-400", "5e-324",
           "12345678901234567890.12", "12345678901234567890123456789", "0.1", "-12.000000000000000000001"]
STRINGS = ['""', '"x"', '"caf\\u00e9"', '"café"', '"\\ud83d\\ude00"', '"😀"', '"\\"q\\" \\\\ \\/ \\b\\f\\n\\r\\t"',
           '"\\ud800"', '"a\\u0000b"', '"日本語"', '"tab\\tin"']
CONSTANTS = ["true", "false", "null", "NaN", "Infinity", "-Infinity"]


def space(rng: random.Random) -> str:
    return "".join(rng.choice(WHITESPACE) for _ in range(rng.choice([0, 0, 0, 1, 2, 5])))


def value_text(rng: random.Random, depth: int = 0) -> str:
    """The text of a random JSON value (json.loads' dialect: NaN and Infinity too), with random whitespace
    inside; duplicate keys sometimes."""
    kind = rng.random()
    if depth < 3 and kind < 0.2:
        items = [value_text(rng, depth + 1) for _ in range(rng.randrange(4))]
        return "[" + space(rng) + ("," + space(rng)).join(item + space(rng) for item in items) + "]"
    if depth < 3 and kind < 0.45:
        keys = [rng.choice(STRINGS[:4] + ['"id"', '"b"', '"a"', '"\\u0061"']) for _ in range(rng.randrange(5))]
        members = [f"{space(rng)}{key}{space(rng)}:{space(rng)}{value_text(rng, depth + 1)}{space(rng)}"
                   for key in keys]
        return "{" + ",".join(members) + (space(rng) if not members else "") + "}"
    if kind < 0.7:
        return rng.choice(NUMBERS)
    if kind < 0.9:
        return rng.choice(STRINGS)
    return rng.choice(CONSTANTS)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """data cut at random places: one-byte chunks, cuts inside multi-byte characters, escapes and numbers."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(12)))) if len(data) > 1 else []
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)])]


def same(a, b) -> bool:
    """Equal as json.loads gives them, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("batch", range(20))
def test_each_item_is_the_value_json_loads_gives_and_the_exact_slice_of_the_document(batch):
    for seed in range(batch * 150, (batch + 1) * 150):
        check_random_document(random.Random(seed))


def check_random_document(rng: random.Random) -> None:
    texts = [value_text(rng) for _ in range(rng.randrange(6))]
    document = space(rng) + "[" + space(rng) + ("," + space(rng)).join(text + space(rng) for text in texts) + "]"
    document += space(rng)
    encoding = rng.choice(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32-le"])
    data = document.encode(encoding, "surrogatepass")
    reference = json.loads(data)

    stream = JSONStream(chunks(data, rng), with_text=True)
    assert stream.peek() == "["
    items = list(stream.items())
    stream.end()

    assert all(isinstance(item, Item) for item in items)
    assert [item.text for item in items] == texts
    assert same([item.value for item in items], reference)
    for item in items:
        assert same(json.loads(item.text), item.value)

    plain = JSONStream(chunks(data, rng))
    plain.peek()
    assert same(list(plain.items()), reference)


@pytest.mark.parametrize("document", [b'[1, 2', b'[{"a": 1} {"b": 2}]', b'[1e400, tru]', b'["\\ud800", "x]'])
def test_a_bad_document_fails_with_json_loads_message_with_text_too(document):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(document)
    for with_text in (False, True):
        stream = JSONStream([document[:3], document[3:]], with_text=with_text)
        stream.peek()
        with pytest.raises(JSONStreamError) as got:
            list(stream.items())
            stream.end()
        assert str(got.value) == str(expected.value)


def test_a_record_over_many_chunks_keeps_its_whole_text():
    record = '{"id": 1,\n  "body": "%s", "n": 12345678901234567890.12 }' % ("é" * 50_000)
    data = f"[ {record} ,{record}]".encode()
    stream = JSONStream((data[i:i + 1000] for i in range(0, len(data), 1000)), with_text=True)
    stream.peek()
    assert [item.text for item in stream.items()] == [record, record]
