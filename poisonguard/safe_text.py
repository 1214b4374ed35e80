"""Text shown to people: counts written for reading, and text from a batch (cells, column names) or a
person (reasons, reviewer names) made safe to show.

A column or cell can hold terminal escape sequences (set the window title, clear the screen), a spreadsheet
formula, or markdown that renders as a link: each place that shows such text to a person neutralises it
for its medium. Standard library only, so every command can import it cheaply.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Characters a spreadsheet runs as the start of a formula when a cell begins with them (OWASP's list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN_SPECIALS = "\\`*_[]<>|()#!{}"


def format_count(value: int | None) -> str:
    """A row count with thousands separators, ``?`` when unknown (an unreadable batch)."""
    return "?" if value is None else f"{value:,}"


def printable(text: str) -> str:
    """``text`` with every control, format and line-separator character written as a visible escape
    (ESC becomes ``\\x1b``, a right-to-left override ``\\u202e``), so a terminal shows it instead of
    obeying it. Ordinary letters, marks and symbols of any script pass unchanged."""
    if text.isprintable():
        return text
    return "".join(_visible(character) for character in text)


def _visible(character: str) -> str:
    if character == " " or unicodedata.category(character)[0] not in ("C", "Z"):
        return character
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def markdown_text(text: str) -> str:
    """``text`` as literal markdown: :func:`printable`, then markdown's special characters escaped, so a
    dataset or column name cannot become a link, an image or a table cell of its own."""
    text = printable(text)
    for character in _MARKDOWN_SPECIALS:
        text = text.replace(character, "\\" + character)
    return text


def spreadsheet_text(value: Any) -> Any:
    """``value`` with a leading quote when a spreadsheet would run it as a formula; other values as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
