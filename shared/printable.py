"""Text from outside (keys, reasons, dead letters) as it is safe to print on a terminal: control
and format characters (ESC, BEL, CR, U+202E ...) escaped as ``\\xNN`` / ``\\uNNNN`` (issue 23:
``veil submit`` echoed refused keys with raw terminal escape bytes)."""

from __future__ import annotations

import unicodedata

_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every control or format character escaped (a backslash kept as is)."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE else c for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
