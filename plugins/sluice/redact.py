"""Mask credentials in error text: the known values of the connections, then credential-shaped patterns.

Error messages name URLs and sometimes echo headers, tuples of headers or connection strings, and a
third-party library may quote a value without naming it (requests' InvalidHeader quotes a header value
that ends in a newline). So `redact` masks in two passes:

1. every value a `Secrets` knows (a connection's password, login:password and its Base64, its extra's
   values, in the forms an exception may print them), as Airflow's secrets masker does for task logs;
2. credential-shaped patterns, for values nobody registered: a URL loses its userinfo, query string and
   fragment; values of credential-shaped keys, headers and header tuples become MASK, whole (a value is
   not cut at ; , & or ), which a password may hold).

It keeps what a user needs to act (scheme, host, port, path, which setting or header was involved).
Applying it twice changes nothing.
"""

import base64
import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Iterator
from urllib.parse import quote, quote_plus

MASK = "***"

# A known value shorter than this is not masked: a 1-3 character value ("1", "yes", "GET") occurs in ordinary
# text by chance, so masking it everywhere would garble every message (and its masks would point at where it
# occurs anyway), and a secret that short is guessed in moments whatever is masked. Airflow's masker skips
# short values for the same reason.
MIN_SECRET_LENGTH = 4
AUTH_SCHEMES = ("basic", "bearer", "digest", "token", "negotiate", "ntlm")

# scheme://[userinfo@]host[:port][/path][?query][#fragment]; quotes and brackets end a URL in prose.
# The userinfo part runs to the last '@' before the path, so a password holding '@', '?', '#', ';' or ','
# goes whole (https://user:pa?ss@host is https://host, not https://user:pa).
_URL = re.compile(r"""\b([a-z][a-z0-9+.-]*://)(?:[^\s/'"<>]*@)?([^\s/?#'"<>@]*)([^\s?#'"<>]*)(?:[?#][^\s'"<>]*)?""",
                  re.IGNORECASE)
# A path with a query but no scheme, as urllib3 writes it ("Max retries exceeded with url: /x?token=a").
_PATH_QUERY = re.compile(r"""((?:^|[\s'"(=:])/[^\s?#'"<>]*)[?#][^\s'"<>]+""")

# A quoted string, backslash escapes included; one whose closing quote was cut off runs to the end of the text.
_QUOTED = r"""(?:"(?:[^"\\]|\\.)*(?:"|\Z)|'(?:[^'\\]|\\.)*(?:'|\Z))"""
_CLOSED_QUOTED = r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
# ["a", "b"] or ('user', 'pw'): a header's list of values, requests' auth tuple
_ITEMS = rf"""\s*{_CLOSED_QUOTED}(?:\s*,\s*{_CLOSED_QUOTED})*\s*"""
_SEQUENCE = rf"""(?:\[{_ITEMS}\]|\({_ITEMS}\))"""
# An unquoted value runs to white space: p@ss;wo,r&d)x goes whole. A quote ends it only where white space or
# the end follows (the closing quote of a quoted DSN: 'host=db password=x').
_BARE = r"""[^\s'"]+(?:['"]+[^\s'"]+)*"""
# A key that ends naming a credential (password, db_password, access_token, X-API-Key, client_secret,
# aws_secret_access_key, passphrase, basic_auth, ...); token_count or pwd_id are data, not credentials.
_KEY = r"""[\w-]*(?:password|passwd|pwd|passphrase|token|api[_-]?key|secret|(?:secret|access|private)[_-]?key|auth)"""
_HEADER_KEY = r"""(?:[\w-]*authorization|(?:set-)?cookie)"""
_SEPARATOR = r"""['"]?\s*[:=]\s*"""

# Authorization / Proxy-Authorization: keep the scheme (Basic, Bearer, ...), mask the credentials.
_AUTHORIZATION = re.compile(
    rf"""(\b[\w-]*authorization{_SEPARATOR})(?:({_SEQUENCE}|{_QUOTED})|(?:({'|'.join(AUTH_SCHEMES)})\s+)?({_BARE}))""",
    re.IGNORECASE)
# Cookie / Set-Cookie: "a=1; b=2" is one value, to the end of the line.
_COOKIE = re.compile(rf"""(\b(?:set-)?cookie{_SEPARATOR})(?:{_SEQUENCE}|{_QUOTED}|[^\r\n]+)""", re.IGNORECASE)
# key=value, key: value, "key": "value", "key": ["v"], auth=('user', 'pw').
_CREDENTIAL = re.compile(rf"""(\b{_KEY}{_SEPARATOR})(?:{_SEQUENCE}|{_QUOTED}|{_BARE})""", re.IGNORECASE)
# A header as a tuple or list item: ('Authorization', 'Basic x'), ["X-Api-Key", "k"].
_PAIR = re.compile(rf"""([(\[]\s*(['"])(?:{_KEY}|{_HEADER_KEY})\2\s*,\s*)({_SEQUENCE}|{_QUOTED})""", re.IGNORECASE)
# requests' InvalidHeader and http.client's ValueError quote the value without its name:
# "... in header value: 'Basic ZXRs...\n'", "Invalid header value b'Basic ZXRs...\r\n'".
_HEADER_VALUE = re.compile(rf"""(\bheader value:?\s*b?)(?:{_QUOTED}|{_BARE})""", re.IGNORECASE)
_BEARER = re.compile(r"""\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]+""", re.IGNORECASE)
_QUOTED_STRING = re.compile(_QUOTED)
_SCHEME_WORD = re.compile(rf"""^({'|'.join(AUTH_SCHEMES)})\s+\S""", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Secrets:
    """Values that must never be stored or served, in every form an exception may print them."""

    values: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *values: str | None) -> "Secrets":
        """The given values and their printed forms; None, empty and too-short values are left out."""
        return cls(frozenset(form for value in values if value for form in _forms(value)))

    @classmethod
    def of_connection(cls, login: str | None = None, password: str | None = None,
                      extra: dict | str | None = None) -> "Secrets":
        """A connection's password, login:password and its Base64 (as Basic auth sends it), and every string
        value of its extra (headers nested under "headers" too, a header's value a string or a list)."""
        values = [password]
        if login and password:
            pair = f"{login}:{password}".encode()
            values += [f"{login}:{password}", base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()]
        return cls.of(*values, *_strings(_parsed(extra)))

    def union(self, *others: "Secrets") -> "Secrets":
        return Secrets(self.values.union(*(other.values for other in others)))

    def __bool__(self) -> bool:
        return bool(self.values)

    @functools.cached_property
    def _pattern(self) -> re.Pattern | None:
        if not self.values:
            return None
        # longest first, so a value is masked whole before any shorter value inside it
        ordered = sorted(self.values, key=lambda value: (-len(value), value))
        return re.compile("|".join(map(re.escape, ordered)))

    def mask(self, text: str) -> str:
        """text with each known value replaced by MASK."""
        return text if self._pattern is None else self._pattern.sub(MASK, text)


def redact(text: str | None, secrets: Secrets | None = None) -> str | None:
    """`text` with known secret values masked, URL credentials and query strings dropped and credential-shaped
    values masked; None stays None."""
    if text is None:
        return None
    if secrets:
        text = secrets.mask(text)
    text = _URL.sub(_bare_url, text)
    text = _PATH_QUERY.sub(r"\1", text)
    text = _HEADER_VALUE.sub(_masked_value, text)
    text = _PAIR.sub(_masked_pair, text)
    text = _AUTHORIZATION.sub(_masked_authorization, text)
    text = _COOKIE.sub(_masked_value, text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return _CREDENTIAL.sub(_masked_value, text)


def _parsed(extra: dict | str | None):
    if isinstance(extra, str):
        try:
            return json.loads(extra)
        except ValueError:
            return extra  # not JSON: the text as a whole is the value to mask
    return extra


def _strings(value) -> Iterator[str]:
    """Every string in a parsed extra: values of nested objects and lists too. Numbers and booleans are settings
    (a timeout, a page size), not credentials, and masking "30" everywhere would garble every message."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _forms(value: str) -> Iterable[str]:
    """value as an exception may print it: as is, stripped of the white space that made it invalid, repr- and
    JSON-escaped, URL-quoted, and without its auth scheme ("Basic abc" also as "abc")."""
    found = set()
    for base in {value, value.strip()}:
        scheme = _SCHEME_WORD.match(base)
        parts = [base] + ([base[scheme.end(1):].strip()] if scheme else [])
        for part in parts:
            found.update({part, repr(part)[1:-1], json.dumps(part)[1:-1], quote(part, safe=""), quote_plus(part),
                          part.rstrip("=")})
    return {form for form in found if len(form) >= MIN_SECRET_LENGTH and form != MASK}


def _bare_url(match: re.Match) -> str:
    scheme, host, path = match.groups()
    return f"{scheme}{host}{path}"


def _masked_quoted(value: str) -> str:
    """A quoted value or a sequence of them with each string's content masked; an unquoted value as MASK."""
    if value[:1] in "[(":
        return _QUOTED_STRING.sub(lambda item: f"{item.group(0)[0]}{MASK}{item.group(0)[0]}", value)
    if value[:1] in "'\"":
        closed = len(value) > 1 and value.endswith(value[0])
        return f"{value[0]}{MASK}{value[0] if closed else ''}"
    return MASK


def _masked_value(match: re.Match) -> str:
    key = match.group(1)
    return key + _masked_quoted(match.group(0)[len(key):])


def _masked_pair(match: re.Match) -> str:
    prefix, value = match.group(1), match.group(3)
    if value[:1] in "'\"" and re.match(r"[\w-]*authorization", prefix.strip("([ '\",").lower()):
        return prefix + _masked_with_scheme(value)
    return prefix + _masked_quoted(value)


def _masked_with_scheme(quoted: str) -> str:
    """'Basic abc' as 'Basic ***': the scheme says how the client authenticated, the rest is the credential."""
    scheme = _SCHEME_WORD.match(quoted[1:])
    if not scheme:
        return _masked_quoted(quoted)
    closed = len(quoted) > 1 and quoted.endswith(quoted[0])
    return f"{quoted[0]}{scheme.group(1)} {MASK}{quoted[0] if closed else ''}"


def _masked_authorization(match: re.Match) -> str:
    prefix, quoted, scheme, _ = match.groups()
    if quoted is not None:
        return prefix + (_masked_quoted(quoted) if quoted[:1] in "[(" else _masked_with_scheme(quoted))
    return f"{prefix}{scheme} {MASK}" if scheme else f"{prefix}{MASK}"


# A record's field that holds a credential, by its name: it ends naming one (password, db_pwd, apiKey,
# X-Api-Key, client_secret, session_token, Authorization, Cookie, ...). token_count or pwd_id are data.
CREDENTIAL_KEY = re.compile(
    r"""(?:password|passwd|pwd|passphrase|token|api[\s_.-]?key|secret|(?:secret|access|private)[\s_.-]?key"""
    r"""|auth|authorization|cookie|credentials?)$""", re.IGNORECASE)
# JSON text, also cut anywhere: strings (one cut short runs to the end), punctuation, scalars, white space
_JSON_TOKEN = re.compile(r"""("(?:[^"\\]|\\.)*(?:"|\\?\Z))|([{}\[\],:])|([^\s{}\[\],:"]+)|(\s+)""", re.DOTALL)


def is_credential_key(key: str) -> bool:
    return bool(CREDENTIAL_KEY.search(key))


def mask_credential_fields(value):
    """A record (parsed JSON) with the value of every credential-shaped key masked, in nested objects and lists
    too; a string is read as the JSON text of a record, possibly cut short (see mask_credential_json)."""
    if isinstance(value, dict):
        return {key: MASK if is_credential_key(str(key)) else mask_credential_fields(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [mask_credential_fields(item) for item in value]
    if isinstance(value, str):
        return mask_credential_json(value)
    return value


def mask_credential_json(text: str) -> str:
    """JSON text, whole or cut anywhere, with the value after each credential-shaped key as "***": a string or
    scalar, or an object or list to its end (to the end of the text when it was cut inside). A text that is one
    JSON string (a raw record quoted, then cut) is read inside too. Anything else is left as it is."""
    if text.startswith('"'):
        inner = _json_string_prefix(text)
        if inner is not None:
            content, closed = inner
            masked = mask_credential_json(content)
            if masked == content:
                return text  # as the database wrote it, escapes and all
            quoted = json.dumps(masked, ensure_ascii=False)
            return quoted if closed else quoted[:-1]
    tokens = [match.group(0) for match in _JSON_TOKEN.finditer(text)]
    if "".join(tokens) != text:
        return text  # not JSON-like at all (a CSV line): no key to go by
    out, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        out.append(token)
        index += 1
        if not (token.startswith('"') and _is_credential_string(token)):
            continue
        colon = _next_significant(tokens, index)
        if colon is None or tokens[colon] != ":":
            continue
        start = _next_significant(tokens, colon + 1)
        if start is None:
            continue
        out.extend(tokens[index:start])  # the colon and white space
        index = _value_end(tokens, start)
        out.append(f'"{MASK}"')
    return "".join(out)


def _is_credential_string(token: str) -> bool:
    try:
        key = json.loads(token)
    except ValueError:
        return False  # a key cut short: no value follows it
    return is_credential_key(key)


def _next_significant(tokens: list[str], index: int) -> int | None:
    while index < len(tokens) and tokens[index].isspace():
        index += 1
    return index if index < len(tokens) else None


def _value_end(tokens: list[str], start: int) -> int:
    """Index after the JSON value starting at tokens[start]: one token, or an object or list to its close."""
    if tokens[start] not in ("{", "["):
        return start + 1
    depth, index = 0, start
    while index < len(tokens):
        if tokens[index] in ("{", "["):
            depth += 1
        elif tokens[index] in ("}", "]"):
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return index


def _json_string_prefix(text: str) -> tuple[str, bool] | None:
    """The content of a JSON string text, which may be cut short (also inside an escape), and whether it is
    closed; None if the text is not one string."""
    for cut in range(0, 7):  # the longest escape, \uXXXX, is 6 characters
        candidate = text[:len(text) - cut] if cut else text
        for closing in ("", '"'):
            try:
                value = json.loads(candidate + closing)
            except ValueError:
                continue
            return (value, not closing and not cut) if isinstance(value, str) else None
    return None
