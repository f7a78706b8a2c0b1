"""A source's declared fields in /data: which to serve (fields=), filters in PostgREST's syntax, the order by a
field and its keyset cursor, composed into the named queries of sql/webapp.sql."""

import datetime as dt
import decimal
import hashlib
import json
import re
from dataclasses import dataclass, field

from marshmallow import ValidationError
from psycopg2 import sql

from sluice import queries
from webapp import exact_json
from webapp.schemas import comparable, updated_at_key

SQL_FILE = "webapp.sql"
# How each type is compared in SQL: integers as numeric too, so a JSON number with any digits compares exactly.
SQL_TYPES = {"text": "text", "integer": "numeric", "numeric": "numeric", "boolean": "boolean",
             "timestamp": "timestamptz", "date": "date"}
COMPARISONS = {"neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
ORDERED = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "is")
# The operators each type takes (the README's "Declared fields" and the OpenAPI document list the same).
OPERATORS = {"text": (*ORDERED, "like", "ilike"), "integer": ORDERED, "numeric": ORDERED, "timestamp": ORDERED,
             "date": ORDERED, "boolean": ("eq", "neq", "is"), "json": ("is",)}
MAX_IN_VALUES = 100
MAX_EXPONENT = 1000
PREFIX = "attributes."  # filters on a field named like one of /data's own parameters: attributes.page=eq.3
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# in.(a,b,"c,d"): a double-quoted item may hold commas and parentheses; \" and \\ inside it are literal
IN_ITEM = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,"]*?))\s*(?:,|$)')


@dataclass(frozen=True)
class Filter:
    field: str
    type: str
    operator: str
    values: tuple  # typed: one value, several for in, () for is.null

    def key(self) -> list:
        """What identifies the filter in a cursor's fingerprint."""
        return [self.field, self.operator, [exact_json.dumps(value, default=str) for value in self.values]]


@dataclass(frozen=True)
class Order:
    field: str
    type: str
    descending: bool


@dataclass
class Query:
    """The declared-field part of one /data request."""

    declared: dict[str, str] = field(default_factory=dict)  # field -> type, in catalog order
    fields: list[str] | None = None
    filters: list[Filter] = field(default_factory=list)
    order: Order | None = None

    def fingerprint(self, source: str | None) -> str | None:
        """Binds a cursor to the order and filters that made it; None for the plain default order."""
        if self.order is None and not self.filters:
            return None
        order = [self.order.field, self.order.descending] if self.order else None
        text = json.dumps([source, order, sorted(item.key() for item in self.filters)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fragment(name: str) -> sql.SQL:
    """A named fragment of sql/webapp.sql without its comment lines (it is composed inside other lines)."""
    text = queries.query(SQL_FILE, name)
    return sql.SQL("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--")))


def _invalid(name: str, message: str) -> ValidationError:
    return ValidationError({name: [message]})


def typed(kind: str, text: str, name: str):
    """The value of a filter or cursor as its field's type; a 400 naming the field and the value otherwise."""
    def bad(expected: str):
        return _invalid(name, f"{text!r} is not {expected}, the declared type of {name!r}.")
    if "\x00" in text:
        raise bad("text without NUL")
    if kind == "text":
        return text
    if kind == "boolean":
        if text not in ("true", "false"):
            raise bad("a boolean (true or false)")
        return text == "true"
    if kind in ("integer", "numeric"):
        if not (INTEGER if kind == "integer" else NUMBER).fullmatch(text):
            raise bad("an integer" if kind == "integer" else "a number")
        number = decimal.Decimal(text)
        # an exponent numeric cannot hold (1e99999) would fail the query: refused, with room to spare
        if abs(number.adjusted()) > MAX_EXPONENT:
            raise bad(f"a number within 1e-{MAX_EXPONENT} to 1e{MAX_EXPONENT}")
        return number
    if kind == "date":
        try:
            if not DATE.fullmatch(text):
                raise ValueError(text)
            return dt.date.fromisoformat(text)
        except ValueError:
            raise bad("a date (YYYY-MM-DD)") from None
    try:  # timestamp: ISO 8601, naive means UTC, as updated_since
        moment = dt.datetime.fromisoformat(text)
        return comparable(moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc))
    except ValueError:
        raise bad("an ISO 8601 timestamp within 0001-9999 (e.g. 2026-01-01T00:00:00Z; write + as %2B)") from None


def _in_values(text: str, name: str) -> list[str]:
    if not (text.startswith("(") and text.endswith(")")) or len(text) < 3:
        raise _invalid(name, f"{text!r}: in takes a list in parentheses, e.g. in.(a,b).")
    inner, values, position = text[1:-1], [], 0
    while position < len(inner):
        match = IN_ITEM.match(inner, position)
        if match is None or match.end() == position:
            raise _invalid(name, f"{text!r}: in takes a list in parentheses, e.g. in.(a,\"b,c\").")
        quoted, bare = match.groups()
        values.append(re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare)
        position = match.end()
    if inner.endswith(","):
        values.append("")
    if len(values) > MAX_IN_VALUES:
        raise _invalid(name, f"in takes at most {MAX_IN_VALUES} values.")
    return values


def parse_filter(name: str, kind: str, text: str) -> Filter:
    operator, dot, operand = text.partition(".")
    if not dot or operator not in (*ORDERED, "like", "ilike"):
        raise _invalid(name, f"{text!r}: unknown operator {operator!r}; write <operator>.<value> with one of "
                             f"{', '.join(OPERATORS[kind])} (e.g. {name}=eq.<value>).")
    if operator not in OPERATORS[kind]:
        raise _invalid(name, f"operator {operator!r} does not apply to {kind} field {name!r}; "
                             f"it takes {', '.join(OPERATORS[kind])}.")
    if operator == "is":
        allowed = ("null", "true", "false") if kind == "boolean" else ("null",)
        if operand not in allowed:
            raise _invalid(name, f"{text!r}: is takes {' or '.join(allowed)} for a {kind} field.")
        return Filter(name, kind, "is", () if operand == "null" else (operand == "true",))
    if operator == "in":
        return Filter(name, kind, "in", tuple(typed(kind, value, name) for value in _in_values(operand, name)))
    if operator in ("like", "ilike"):
        # PostgREST's * stands for %, which a URL would have to encode
        return Filter(name, kind, operator, (typed(kind, operand, name).replace("*", "%"),))
    return Filter(name, kind, operator, (typed(kind, operand, name),))


def parse(declared: dict[str, str], source: str | None, fields_text: str | None, order_text: str | None,
          filters: dict[str, list[str]]) -> Query:
    """The declared-field part of a /data query string; ValidationError (a 400) naming what is wrong."""
    asked = {"fields": fields_text is not None, "order": order_text is not None}
    if source is None:
        problems = {name: ["Needs source=<name>: fields and order apply to one source's declared fields."]
                    for name, given in asked.items() if given}
        problems.update({name: ["Unknown parameter. A filter on a declared field needs source=<name>."]
                         for name in filters})
        if problems:
            raise ValidationError(problems)
        return Query()
    known = ", ".join(declared) or "none"

    def declared_type(name: str, parameter: str) -> str:
        if name not in declared:
            raise _invalid(parameter, f"{name!r} is not a declared field of {source}; its fields are: {known}.")
        return declared[name]

    query = Query(declared=declared)
    if fields_text is not None:
        names = fields_text.split(",")
        for name in names:
            declared_type(name, "fields")
        query.fields = list(dict.fromkeys(names))
    if order_text is not None:
        name, _, direction = order_text.rpartition(".")
        if not name or direction not in ("asc", "desc"):
            raise _invalid("order", f"{order_text!r}: write <field>.asc or <field>.desc.")
        kind = declared_type(name, "order")
        if kind == "json":
            raise _invalid("order", f"{name!r} is a json field, which has no order.")
        query.order = Order(name, kind, direction == "desc")
    for parameter, texts in filters.items():
        name = parameter.removeprefix(PREFIX)
        kind = declared_type(name, parameter)
        query.filters.extend(parse_filter(name, kind, text) for text in texts)
    return query


def project(attributes: dict, query: Query) -> dict:
    """The declared fields (or those of fields=) of one stored attributes object; a missing one is null."""
    names = query.fields if query.fields is not None else list(query.declared)
    return {name: attributes.get(name) for name in names}


def _value(name: str, kind: str, params: dict) -> sql.Composable:
    key = f"field_{len(params)}"
    params[key] = name
    return fragment("data_attribute_value").format(field=sql.Placeholder(key), type=sql.SQL(SQL_TYPES[kind]))


def _contained(item: Filter) -> list | None:
    """The JSON values whose containment states the filter exactly, or None: eq, in and is of every type but
    timestamp, whose stored spelling (a fraction or not) must not decide."""
    if item.operator == "is":
        return [item.values[0] if item.values else None]
    if item.operator in ("eq", "in") and item.type != "timestamp":
        return [value.isoformat() if isinstance(value, dt.date) else value for value in item.values]
    return None


def _contains(document: dict, params: dict) -> sql.Composable:
    key = f"document_{len(params)}"
    params[key] = exact_json.dumps(document)
    return fragment("data_attribute_contains").format(document=sql.Placeholder(key))


def _condition(item: Filter, params: dict) -> sql.Composable:
    contained = _contained(item)
    if contained is not None:  # in: one containment per value, which the index answers as a BitmapOr
        return sql.SQL("({})").format(sql.SQL(" or ").join(_contains({item.field: one}, params) for one in contained))
    value = _value(item.field, item.type, params)
    if item.operator in ("eq", "in"):
        compare = [(fragment("data_attribute_compare"), "=", one) for one in item.values]
    elif item.operator in ("like", "ilike"):
        compare = [(fragment("data_attribute_like"), item.operator, item.values[0])]
    else:
        compare = [(fragment("data_attribute_compare"), COMPARISONS[item.operator], item.values[0])]
    parts = []
    for template, operator, operand in compare:
        key = f"value_{len(params)}"
        params[key] = operand
        parts.append(template.format(value=value, operator=sql.SQL(operator), parameter=sql.Placeholder(key),
                                     type=sql.SQL(SQL_TYPES[item.type])))
    return sql.SQL("({})").format(sql.SQL(" or ").join(parts))


def where(query: Query, params: dict) -> sql.Composable:
    """The {attributes} of data_page, data_count and data_estimate; adds its values to params."""
    if not query.filters:
        return fragment("data_no_attribute_filter")
    # single equalities on distinct fields make one document: one index probe finds the rows holding all of them
    single, rest = {}, []
    for item in query.filters:
        contained = _contained(item)
        if contained is not None and len(contained) == 1 and item.field not in single:
            single[item.field] = contained[0]
        else:
            rest.append(item)
    conditions = [_contains(single, params)] if single else []
    conditions.extend(_condition(item, params) for item in rest)
    return sql.SQL(" and ").join(conditions)


def keyset(query: Query, after, params: dict) -> tuple[sql.Composable, sql.Composable]:
    """The {after} and {order} of data_page: after is None (first page) or (key, id) of the last row served."""
    if query.order is None:
        if after is not None:
            params.update(after_updated_at=after[0], after_id=after[1])
        after_sql = fragment("data_after_updated") if after is not None else fragment("data_no_attribute_filter")
        return after_sql, fragment("data_order_updated")
    order = query.order
    value = _value(order.field, order.type, params)
    direction = sql.SQL("desc" if order.descending else "asc")
    order_sql = fragment("data_order_value").format(value=value, direction=direction)
    if after is None:
        return fragment("data_no_attribute_filter"), order_sql
    beyond = sql.SQL("<" if order.descending else ">")
    params.update(after_value=after[0], after_id=after[1])
    name = "data_after_null" if after[0] is None else "data_after_value"
    return fragment(name).format(value=value, beyond=beyond, type=sql.SQL(SQL_TYPES[order.type])), order_sql


def position(row: dict, query: Query, source: str | None) -> tuple:
    """The cursor position after a served row: (key, id), and the fingerprint when an order or filters bind it."""
    key = row["attributes"].get(query.order.field) if query.order else row["updated_at"]
    fingerprint = query.fingerprint(source)
    return (key, row["id"], fingerprint) if fingerprint else (key, row["id"])


def cursor_key(query: Query, stored):
    """A cursor's key, typed for the query: its updated_at for the default order, else the field's value."""
    if query.order is None:
        return updated_at_key(stored)
    if stored is None:
        return None
    kind = query.order.type
    if kind == "boolean" and isinstance(stored, bool):
        return stored
    if kind in ("integer", "numeric") and isinstance(stored, (int, decimal.Decimal)) and not isinstance(stored, bool):
        return decimal.Decimal(stored)
    if kind in ("text", "timestamp", "date") and isinstance(stored, str):
        return typed(kind, stored, query.order.field)
    raise ValueError(f"not a {kind}")
