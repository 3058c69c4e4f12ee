"""Text that reaches a terminal: file names and ids shown as they are, control characters not.

A key such as ``a\\x1b]0;pwned\\x07.jpg`` is a valid S3 key and file name; printed raw, its escape
sequence retitles the terminal, moves the cursor or hides text, and a newline in it forges a log
line. Text output and log lines show such characters as Python escapes; JSON, CSV and the tables
keep the exact bytes.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included), DEL, and the C1 controls that terminals also act on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
