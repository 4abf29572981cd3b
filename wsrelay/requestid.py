"""Request ids: the ``X-Request-ID`` each request carries upstream and into the access log.

Pure rules, no I/O but ``os.urandom``:

- with ``trust_request_id = on`` a client's ``X-Request-ID`` is kept when it is exactly one field
  whose value is 1 to :data:`MAX_LENGTH` visible ASCII characters of :data:`_ALLOWED` (tokens,
  UUIDs, base64, ``host:counter`` forms); anything else (absent, empty, too long, repeated, a space,
  a quote, a control or non-ASCII byte) is replaced by a new id and never passed on;
- otherwise every request gets a new id: 32 lower-case hex digits from ``os.urandom`` (as nginx's
  ``$request_id``), unguessable and the same in every worker process (no shared counter).
  ``os.urandom(16).hex()`` costs about 0.3 microseconds (a prefix-and-counter id 0.12: the
  difference is not worth ids that leak a process's request count).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

HEADER = b"X-Request-ID"
#: the lower-case field name, as twisted.web's Headers and ``headers.py`` compare it
FIELD = b"x-request-id"
#: ``drop`` for ``headers.request_to_upstream``: the client's field never goes upstream as such
#: (wsrelay adds the request's id itself)
DROP = frozenset({FIELD})
#: the longest client id kept
MAX_LENGTH = 128

_ALLOWED = re.compile(rb"[A-Za-z0-9!#$%&'*+\-.^_`|~/:=@]{1," + str(MAX_LENGTH).encode() + rb"}")


def new_id() -> bytes:
    """A fresh id: 32 hex digits."""
    return os.urandom(16).hex().encode("ascii")


def valid(value: bytes) -> bool:
    """True if a client's ``X-Request-ID`` value may be kept (see the module docstring)."""
    return _ALLOWED.fullmatch(value) is not None


def choose(values: Sequence[bytes] | None, trust: bool) -> bytes:
    """The request's id: the client's (``values``: every ``X-Request-ID`` field it sent) when
    ``trust`` and it is one valid value, else a new one."""
    if trust and values is not None and len(values) == 1 and _ALLOWED.fullmatch(values[0]) is not None:
        return values[0]
    return new_id()
