"""Deterministic sample sources: JSONPlaceholder-shaped posts and comments, and a CSV in the default column layout."""

import csv
import io
import random
from collections.abc import Iterator

WORDS = ("alpha", "beta", "gamma", "delta", "sluice", "weir", "canal", "lock", "Ærø", "façade", "naïve", "Zürich")


def posts(count: int = 100, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)  # nosec B311 # deterministic sample data
    return [
        {
            "userId": 1 + (number - 1) // 10,
            "id": number,
            "title": " ".join(rng.choice(WORDS) for _ in range(4)),
            "body": "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(3)),
        }
        for number in range(1, count + 1)
    ]


def comments(count: int = 200, seed: int = 13) -> list[dict]:
    """Comments on the posts, as JSONPlaceholder's /comments: their ids overlap the posts' ids."""
    rng = random.Random(seed)  # nosec B311 # deterministic sample data
    return [
        {
            "postId": 1 + (number - 1) // 5,
            "id": number,
            "name": " ".join(rng.choice(WORDS) for _ in range(3)),
            "email": f"reader{number}@example.org",
            "body": " ".join(rng.choice(WORDS) for _ in range(10)),
        }
        for number in range(1, count + 1)
    ]


BAD_ROWS = (
    # (row, why it is bad) — the demo and tests show these land in rejected_records
    (["{id}", "widget {id}", "not-a-number", "value is text"], "value is not a number"),
    (["{id}", "", "12.5", "name is empty"], "name missing"),
    (["", "no id", "1", "id is blank"], "blank id"),
    (["{id}", "short row"], "too few fields"),
)


def csv_rows(count: int, seed: int = 11, bad_every: int = 0) -> Iterator[list[str]]:
    """Data rows: ids, names, numbers, descriptions with commas, quotes, newlines and non-ASCII."""
    rng = random.Random(seed)  # nosec B311 # deterministic sample data
    for number in range(1, count + 1):
        if bad_every and number % bad_every == 0:
            template = BAD_ROWS[(number // bad_every) % len(BAD_ROWS)][0]
            yield [cell.format(id=number) for cell in template]
            continue
        name = f"{rng.choice(WORDS)} {number}"
        value = f"{rng.uniform(-1000, 1000):.3f}"
        description = f'{rng.choice(WORDS)}, "{rng.choice(WORDS)}" and {rng.choice(WORDS)}'
        if number % 97 == 0:
            description += "\nsecond line"
        yield [str(number), name, value, description]


def write_csv(file, count: int, *, bad_every: int = 0, header=("id", "name", "value", "description")) -> None:
    writer = csv.writer(file, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(csv_rows(count, bad_every=bad_every))


def csv_bytes(count: int, *, bad_every: int = 0) -> bytes:
    buffer = io.StringIO(newline="")
    write_csv(buffer, count, bad_every=bad_every)
    return buffer.getvalue().encode("utf-8")
