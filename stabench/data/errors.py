"""The one exception type of the data layer.

A benchmark author mistyping ``data.source`` should get one readable line saying
which key was wrong, what value it had and what would have been valid, not a
traceback from deep inside ``datasets``. Subclassing ``ValueError`` keeps it
catchable by callers that only know about bad values.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data config, a prepared data folder or a run's result file that cannot be used."""


def config_error(key: str, value: object, problem: str, valid: str) -> DataError:
    """Build the standard one-line message: ``data.<key> '<value>': <problem>; valid: <valid>``."""
    line = f"data.{key} {value!r}: {problem}; valid: {valid}"
    return DataError(" ".join(line.split()))
