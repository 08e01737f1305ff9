"""User-facing errors.

Anything a user can get wrong (suite file, method or dataset name, config key or type, data file)
raises :class:`BenchError` with a one-line message that names what is wrong and what to do.
The CLI prints it as ``error: ...`` and exits with code 2, before anything runs.
"""


class BenchError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep it to one line: multi-line messages get lost in Ray and CI logs.
        super().__init__(" ".join(str(message).split()))


class DataError(BenchError):
    """A dataset file is missing or its bytes differ from the pinned md5."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf. The trial is recorded as failed; the other trials go on."""


def yaml_error(path, exc: Exception) -> BenchError:
    """A YAML syntax error as one line: ``file:line: not valid YAML (problem)``."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    return BenchError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})")
