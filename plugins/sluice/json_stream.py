"""A JSON document read as a stream: memory holds one value of the outer array or object at a time.

Each such value is decoded by the json module itself (`raw_decode` on its own text, with the C scanner
json.loads uses), so numbers, strings, NaN/Infinity, lone surrogates and the digit limit come out exactly
as json.loads gives them, and so do the error messages: positions are counted over the whole document.
A stream made with_text=True also gives each value of an array with its own text (Item), exactly as the document
spells it, for a raw store that keeps what the source said (key order, whitespace, the digits of a number).
"""

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json's own whitespace set
# A failure this close to the end of the text read so far may be a value cut by the chunk boundary
# ("tru", "-Infinit", "\\u12"); reading on settles it. Longer cuts surface as "Unterminated string".
_CUT_MARGIN = 16


class JSONStreamError(ValueError):
    """The bytes are not one valid JSON document; the message is the one json.loads would give."""


class Item(NamedTuple):
    """A value of an array, decoded, and its own text: the slice of the decoded document it was read from,
    from its first character to its last (no whitespace around it)."""

    value: Any
    text: str


class JSONStream:
    """Parses a JSON document from byte chunks, on demand; with_text: items() gives Item(value, text)."""

    def __init__(self, chunks: Iterable[bytes], *, with_text: bool = False,
                 parse_float: Callable[[str], Any] | None = None, parse_constant: Callable[[str], Any] | None = None):
        """parse_float, parse_constant: as json.loads takes them, for every value this stream decodes."""
        self._chunks = iter(chunks)
        self._with_text = with_text
        self._json = _DECODER if parse_float is None and parse_constant is None else json.JSONDecoder(
            parse_float=parse_float, parse_constant=parse_constant)
        self._text = ""
        self._pos = 0
        self._eof = False
        self._bytes_fed = 0
        # where the dropped (already parsed) text ended, so error positions stay absolute
        self._dropped_chars = 0
        self._dropped_lines = 0
        self._last_newline = -1
        head = self._head()
        # json.loads on bytes: detect UTF-8/16/32 from the first bytes, keep encoded surrogates
        self._decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("surrogatepass")
        self.blank = not head.strip()
        self._feed(head, final=self._eof)

    def _head(self) -> bytes:
        """The first bytes: enough to detect the encoding, and up to the first byte that is not blank."""
        head = b""
        while len(head) < 4 or not head.strip():
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
                break
            head += chunk
        return head

    def _feed(self, data: bytes, *, final: bool) -> None:
        state = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise JSONStreamError(_decode_error(exc, self._bytes_fed - len(state))) from None
        self._bytes_fed += len(data)
        self._text += text

    def _more(self, at_least: int = 1) -> bool:
        """Read at least `at_least` more bytes (or to the end); False when there was nothing left to read."""
        if self._eof:
            return False
        self._drop_parsed()
        wanted = self._bytes_fed + at_least
        while self._bytes_fed < wanted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
                self._feed(b"", final=True)
                break
            self._feed(chunk, final=False)
        return True

    def _drop_parsed(self) -> None:
        pos = self._pos
        newline = self._text.rfind("\n", 0, pos)
        if newline >= 0:
            self._dropped_lines += self._text.count("\n", 0, pos)
            self._last_newline = self._dropped_chars + newline
        self._dropped_chars += pos
        self._text = self._text[pos:]
        self._pos = 0

    def _error(self, message: str, pos: int) -> JSONStreamError:
        """json.JSONDecodeError's text, with line, column and char counted from the document's start."""
        lines = self._dropped_lines + self._text.count("\n", 0, pos) + 1
        newline = self._text.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self._dropped_chars + pos - self._last_newline
        return JSONStreamError(f"{message}: line {lines} column {column} (char {self._dropped_chars + pos})")

    def _decode(self, parse: Callable[[str, int], tuple]):
        """parse(text, pos) -> (value, end), read on while the text read so far may end inside the value."""
        last_problem = None
        while True:
            try:
                value, end = parse(self._text, self._pos)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self._text) - _CUT_MARGIN
                # grow geometrically, so a record spanning many chunks is not re-parsed once per chunk
                if cut and self._more(len(self._text) - self._pos):
                    continue
                raise self._error(exc.msg, exc.pos) from None
            except ValueError as exc:  # an integer over the digit limit, whose digits may still be arriving
                if str(exc) != last_problem and self._more(len(self._text) - self._pos):
                    last_problem = str(exc)
                    continue
                raise
            # a value that ends near the end of the text read so far may go on: "1" of "1e5", "2.5" of "2.5e3"
            if end > len(self._text) - _CUT_MARGIN and self._more():
                continue
            self._pos = end
            return value

    def peek(self) -> str | None:
        """The next character that is not whitespace (None at the end of the document), not consumed."""
        while True:
            self._pos = _WHITESPACE.match(self._text, self._pos).end()
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return None

    def value(self):
        """Decode the next value whole."""
        if self.peek() is None:
            raise self._error("Expecting value", self._pos)
        return self._decode(self._json.raw_decode)

    def parse(self, text: str):
        """A whole value from text, decoded as this stream decodes (its parse_float and parse_constant)."""
        return self._json.decode(text)

    def item(self) -> Item:
        """Decode the next value whole, with its text."""
        if self.peek() is None:
            raise self._error("Expecting value", self._pos)
        # counted from the document's start: reading on may drop the text before the value, never the value
        start = self._dropped_chars + self._pos
        value = self._decode(self._json.raw_decode)
        return Item(value, self._text[start - self._dropped_chars:self._pos])

    def items(self) -> Iterator:
        """Each value of the array that comes next, decoded one at a time (an Item of each, with_text)."""
        self._pos += 1  # the "[" peek() saw
        if self.peek() == "]":
            self._pos += 1
            return
        read = self.item if self._with_text else self.value
        while True:
            yield read()
            char = self.peek()
            if char == "]":
                self._pos += 1
                return
            if char != ",":
                raise self._error("Expecting ',' delimiter", self._pos)
            self._pos += 1

    def members(self) -> Iterator[str]:
        """Each key of the object that comes next; the caller reads its value (value() or items()) before the next."""
        self._pos += 1  # the "{" peek() saw
        char = self.peek()
        if char == "}":
            self._pos += 1
            return
        while True:
            if char != '"':
                raise self._error("Expecting property name enclosed in double quotes", self._pos)
            key = self._decode(lambda text, pos: json.decoder.scanstring(text, pos + 1))
            if self.peek() != ":":
                raise self._error("Expecting ':' delimiter", self._pos)
            self._pos += 1
            yield key
            char = self.peek()
            if char == "}":
                self._pos += 1
                return
            if char != ",":
                raise self._error("Expecting ',' delimiter", self._pos)
            self._pos += 1
            char = self.peek()

    def end(self) -> None:
        """Check that nothing but whitespace follows the document."""
        if self.peek() is not None:
            raise self._error("Extra data", self._pos)


def _decode_error(exc: UnicodeDecodeError, offset: int) -> str:
    """UnicodeDecodeError's own text, with the byte position counted from the body's start."""
    start, end = offset + exc.start, offset + exc.end
    if exc.end - exc.start == 1:
        return (f"'{exc.encoding}' codec can't decode byte 0x{exc.object[exc.start]:02x} in position {start}: "
                f"{exc.reason}")
    return f"'{exc.encoding}' codec can't decode bytes in position {start}-{end - 1}: {exc.reason}"
