"""One tool call's JSON object read character by character as its text arrives (``core.tools``)."""

from __future__ import annotations

import json
from typing import Any

_ARGUMENT_KEYS = ("arguments", "parameters")
BLANK = " \t\r\n"


class CallScanner:
    """One call object ``{"name": ..., "arguments": {...}}`` read character by character as its text
    arrives: its name, the raw text of its arguments, where it ends, and ``failed`` once it cannot be a
    call of an offered function.

    Hand-written: JSON libraries parse whole documents (partial-JSON parsers too, without offsets), and
    streaming the arguments as written needs the offsets of a value that is not complete yet.
    """

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.text = ""
        self.pos = 0  # the next character to read
        self.depth = 0
        self.in_string = self.escape = False
        self.expect_key = True  # in the call object (depth 1): a key comes next, else a value
        self.key: str | None = None  # the key whose value is being read
        self.string_start = -1  # the key or string value being read in the call object
        self.value_start = -1  # the value being read in the call object
        self.last = -1  # the last character read outside strings and blanks (ends a number or literal)
        self.name: str | None = None
        self.args_start = self.args_end = -1
        self.end = -1  # just after the call object's closing brace
        self.failed = False

    def feed(self, piece: str) -> None:
        self.text += piece
        while self.pos < len(self.text) and self.end < 0 and not self.failed:
            self._read(self.text[self.pos], self.pos)
            self.pos += 1

    def _read(self, c: str, i: int) -> None:
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                if self.depth == 1:
                    self._string_read(i + 1)
            return
        if c in BLANK:
            return
        if self.depth == 0:  # the object must open here
            self.depth, self.failed = 1, c != "{"
            return
        if self.depth == 1 and not self.expect_key and self.value_start < 0 and c not in ",}":
            self.value_start = i
            if self.key in _ARGUMENT_KEYS and self.args_start < 0:
                self.args_start = i
        if c == '"':
            self.in_string = True
            self.string_start = i
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 1:
                self._value_read(i + 1)
            elif self.depth == 0:
                if self.value_start >= 0:  # a number or literal before the closing brace
                    self._value_read(self.last + 1)
                self.end = i + 1
                self.failed = self.failed or self.name is None
        elif c == ":" and self.depth == 1:
            self.expect_key = False
        elif c == "," and self.depth == 1:
            if self.value_start >= 0:
                self._value_read(self.last + 1)
            self.expect_key = True
        self.last = i

    def _string_read(self, end: int) -> None:
        if self.expect_key:
            self.key = _loads(self.text[self.string_start : end])
        else:
            self._value_read(end)

    def _value_read(self, end: int) -> None:
        if self.key == "name" and self.name is None:
            name = _loads(self.text[self.value_start : end])
            self.failed = not isinstance(name, str) or name not in self.names
            self.name = name if not self.failed else None
        elif self.value_start == self.args_start:
            self.args_end = end
        self.value_start, self.key = -1, None

    def arguments(self) -> str:
        """The arguments' text read so far: an object's (or list's) raw text as it arrives; arguments sent
        as a JSON string (or anything else) only once complete, a string decoded; ``{}`` for a finished
        call that has none."""
        if self.args_start < 0:
            return "{}" if self.end >= 0 else ""
        if self.text[self.args_start] in "{[":
            return self.text[self.args_start : self.args_end if self.args_end >= 0 else self.pos]
        if self.args_end < 0:
            return ""
        raw = self.text[self.args_start : self.args_end]
        decoded = _loads(raw)
        return decoded if isinstance(decoded, str) else raw


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
