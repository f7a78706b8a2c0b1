"""Mask credentials in error text before it is stored in etl_runs or served by the read API.

Error messages name URLs and sometimes echo headers or connection strings. `redact` keeps what a user
needs to act (scheme, host, port, path, which setting or header was involved) and masks the rest:
a URL loses its userinfo, query string and fragment; values of credential-shaped keys and headers become
MASK. It is applied where error text is written (so new rows hold no secrets) and where it is served (so
rows written by earlier releases are masked too); applying it twice changes nothing.
"""

import re

MASK = "***"

# scheme://[userinfo@]host[:port][/path][?query][#fragment]; quotes and brackets end a URL in prose.
# The userinfo part is greedy up to the last '@' before the path, so a password holding '@' goes too.
_URL = re.compile(r"""\b([a-z][a-z0-9+.-]*://)(?:[^\s/?#'"<>]*@)?([^\s/?#'"<>@]*)([^\s?#'"<>]*)(?:[?#][^\s'"<>]*)?""",
                  re.IGNORECASE)
# A path with a query but no scheme, as urllib3 writes it ("Max retries exceeded with url: /x?token=a").
_PATH_QUERY = re.compile(r"""((?:^|[\s'"(=:])/[^\s?#'"<>]*)[?#][^\s'"<>]+""")
# Authorization / Proxy-Authorization: keep the scheme (Basic, Bearer, ...), mask the credentials.
_AUTHORIZATION = re.compile(
    r"""(\b(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)(?:(basic|bearer|digest|token|negotiate|ntlm)\s+)?"""
    r"""([^\s'",;)}\]]+)""", re.IGNORECASE)
_BEARER = re.compile(r"""\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]+""", re.IGNORECASE)
# key=value, key: value, "key": "value" for any key that ends naming a credential (password, db_password,
# access_token, X-API-Key, client_secret, aws_secret_access_key, ...); token_count or pwd_id are data, not
# credentials. A quoted value is masked whole, quotes kept.
_CREDENTIAL = re.compile(
    r"""(\b[\w-]*(?:password|passwd|pwd|token|api[_-]?key|secret|(?:secret|access|private)[_-]?key)"""
    r"""['"]?\s*[:=]\s*)"""
    r"""(?:"[^"]*"|'[^']*'|[^\s'",;&)}\]]+)""", re.IGNORECASE)


def redact(text: str | None) -> str | None:
    """`text` with URL credentials and query strings dropped and credential values masked; None stays None."""
    if text is None:
        return None
    text = _URL.sub(_bare_url, text)
    text = _PATH_QUERY.sub(r"\1", text)
    text = _AUTHORIZATION.sub(_masked_authorization, text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return _CREDENTIAL.sub(_masked_value, text)


def _bare_url(match: re.Match) -> str:
    scheme, host, path = match.groups()
    return f"{scheme}{host}{path}"


def _masked_authorization(match: re.Match) -> str:
    prefix, scheme, _ = match.groups()
    return f"{prefix}{scheme} {MASK}" if scheme else f"{prefix}{MASK}"


def _masked_value(match: re.Match) -> str:
    key = match.group(1)
    value = match.group(0)[len(key):]
    quote = value[0] if value[0] in "'\"" else ""
    return f"{key}{quote}{MASK}{quote}"
