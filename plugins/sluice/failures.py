"""A step's failure as what may be stored and served: its source, step, error class, HTTP status and host.

An exception's text is a third-party library's prose that may quote a credential (requests' InvalidHeader
quotes a header value without naming it), so what leaves the task is a `Failure`: its `summary()` names no
text at all and is what etl_runs.errors, etl_checkpoint.last_error_summary and the read API carry; its
`message` is masked by the connection's known values and by patterns, and bounded, for the task log and XCom.
The full exception text belongs in the task log only, where Airflow masks the registered secrets.
"""

import dataclasses
import json
import re
from urllib.parse import urlsplit

from sluice.redact import MASK, Secrets, redact

MAX_MESSAGE_CHARS = 4000
MAX_NAME_CHARS = 200  # step, source, error class and host: names, never prose
# one hop of __cause__/__context__ per wrapper; a chain longer than this is a loop or not worth walking
_MAX_CHAIN = 16
_URL = re.compile(r"""\b[a-z][a-z0-9+.-]*://[^\s'"<>]+""", re.IGNORECASE)
# how sluice's http_client words a refused answer: "api: GET https://host/x answered 404 Not Found; ..."
_ANSWERED = re.compile(r"""\banswered (\d{3})\b""")
SUMMARY_FIELDS = ("source", "step", "error_class", "http_status", "host")


@dataclasses.dataclass(frozen=True)
class Failure:
    step: str
    source: str | None
    error_class: str
    message: str  # masked with redact(..., secrets), at most MAX_MESSAGE_CHARS; never in summary()
    http_status: int | None = None
    host: str | None = None

    @classmethod
    def of(cls, exc: BaseException, *, step: str, source: str | None, secrets: Secrets | None = None) -> "Failure":
        """The failure `exc` stands for, its text masked by `secrets` (the connection's values) and by patterns."""
        message = redact(f"{type(exc).__name__}: {exc}", secrets)
        return cls(step=_name(step), source=_name(source), error_class=_name(type(exc).__name__),
                   message=_bounded(message), http_status=_http_status(exc, message), host=_host(exc, secrets))

    def summary(self) -> dict:
        """What may be stored and served: names and numbers, no text of the exception."""
        return {"source": self.source, "step": self.step, "error_class": self.error_class,
                "http_status": self.http_status, "host": self.host}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | dict) -> "Failure":
        """A Failure from to_json()'s text (or its parsed dict, as XCom or a jsonb column returns it)."""
        data = json.loads(text) if isinstance(text, str) else dict(text)
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"a Failure has no field {', '.join(sorted(unknown))}")
        return cls(**data)

    def __str__(self) -> str:
        return self.message


def _bounded(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    marker = " [... shortened]"
    return text[:MAX_MESSAGE_CHARS - len(marker)] + marker


def _name(text: str | None) -> str | None:
    return None if text is None else text[:MAX_NAME_CHARS]


def _chain(exc: BaseException):
    """exc, then its causes and contexts, each once."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _int(value) -> int | None:
    # bool is an int, but True is no status
    return value if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599 else None


def _http_status(exc: BaseException, message: str) -> int | None:
    for link in _chain(exc):
        # a requests.Response is falsy for 4xx and 5xx: compare with None
        response = getattr(link, "response", None)
        if response is not None and _int(getattr(response, "status_code", None)) is not None:
            return response.status_code
        for attribute in ("http_status", "status_code", "status"):
            if _int(getattr(link, attribute, None)) is not None:
                return getattr(link, attribute)
    answered = _ANSWERED.search(message)
    return int(answered.group(1)) if answered else None


def _urls(exc: BaseException):
    for link in _chain(exc):
        for owner in (getattr(link, "request", None), getattr(link, "response", None)):
            url = getattr(owner, "url", None)
            if isinstance(url, str):
                yield url
    for link in _chain(exc):
        yield from _URL.findall(str(link))


def _host(exc: BaseException, secrets: Secrets | None) -> str | None:
    """host[:port] of the first URL the exception names; never its userinfo, path or query."""
    for url in _urls(exc):
        # masked first: a password holding '?', '#' or '/' would otherwise end the userinfo early
        parts = urlsplit(redact(url, secrets))
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            continue  # a port that is no number: not a URL to name
        if not host or MASK in host or "@" in parts.netloc:
            continue
        host = f"[{host}]" if ":" in host else host
        return _name(host if port is None else f"{host}:{port}")
    return None
