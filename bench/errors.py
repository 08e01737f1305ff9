"""User-facing errors.

Anything a user can get wrong (suite file, command-line argument, method or dataset name, config key
or type, data file, output folder) raises :class:`BenchError` with a one-line message that names what
is wrong and what to do. The CLI prints it as ``error: ...`` and exits with code 2, before anything runs.
The line is at most :data:`MAX_LINE` characters: user input is quoted through :func:`brief`, never whole
(an expanded YAML alias bomb once made a 351 MB error line).
"""

from __future__ import annotations

from typing import Any

#: the longest ``error: ...`` line the CLI prints
MAX_LINE = 300
_PREFIX = "error: "


def one_line(message: Any, limit: int = MAX_LINE - len(_PREFIX)) -> str:
    """Whitespace collapsed, control characters replaced, at most ``limit`` characters. An over-long message
    first loses the middle of its longest words (paths), longest first, so hashes and hints stay whole;
    then, if need be, its middle (the start says what is wrong, the end what to do)."""
    words = "".join(c if c.isprintable() else "?" for c in " ".join(str(message).split())).split(" ")
    for i in sorted(range(len(words)), key=lambda i: -len(words[i])):
        if len(" ".join(words)) <= limit or len(words[i]) <= 48:
            break
        words[i] = words[i][:16] + "…" + words[i][-31:]
    text = " ".join(words)
    if len(text) <= limit:
        return text
    tail = min(100, limit // 3)
    return text[: limit - tail - 3] + " … " + text[-tail:]  # " … " is 3 characters


def brief(value: Any, width: int = 40) -> str:
    """A short description of a user's value for an error line: never the whole input."""
    if isinstance(value, dict):
        return f"a mapping with {len(value)} key(s)"
    if isinstance(value, (list, tuple, set)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        text = value if len(value) <= width else value[:width] + "…"
        return repr(text)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= width else text[:width] + "…"


class BenchError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        # One short line: multi-line messages get lost in Ray and CI logs, and a long one buries the point.
        super().__init__(one_line(message))


class DataError(BenchError):
    """A dataset file is missing or its bytes differ from the pinned md5."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf. The trial is recorded as failed; the other trials go on."""


def yaml_error(path, exc: Exception) -> BenchError:
    """A YAML syntax error as one line: ``file:line: not valid YAML (problem)``."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    return BenchError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or brief(str(exc), 80)})")
