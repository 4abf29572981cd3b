"""kosoku's command line, with the cases' timers made longer, and a listing of its case ids.

Usage::

    python -m tests.kosoku_run --timer-scale N KOSOKU-ARGUMENTS...
    python -m tests.kosoku_run --list [-i CASE]... [-x CASE]...

The Autobahn cases give their peer fixed times: many kill the connection half a second or a second
after their last frame (``killAfter``) or close it after a wait (``closeAfter``), whether the
closing handshake is over or not.  Those times were chosen for an endpoint on a quiet machine; the
test runs each case through two extra Python hops on a 2-core machine shared with other runs, so
it multiplies every such timer by N.  A longer timer gives a slow peer more time to do the right
thing; it never turns a wrong close code, a missing echo or an unexpected event into a pass (a
case expecting nothing only waits longer for it).

``--list`` prints the ids the selection picks, one per line, in kosoku's order: the test compares
the number of reports with it.  ``-i``/``-x`` take a case id or a glob where ``*`` matches any run
of characters, as kosoku's do.

kosoku imports its case files through a shim of Autobahn, so this runs in a process of its own,
never in the test process (which imports the real Autobahn).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import sys
from pathlib import Path
from typing import Any


def _case_ids() -> list[str]:
    """Every case id kosoku ships, in its order: each case class its case modules define, alone or
    in a generated family (a list of classes)."""
    from kosoku import _caseindex

    _caseindex.initialize_shims()
    base = importlib.import_module("case").Case
    cases_dir = Path(_caseindex.__file__).resolve().parent / "cases"
    found: set[str] = set()
    for path in sorted(cases_dir.glob("case?*.py")):
        for name, value in vars(importlib.import_module(path.stem)).items():
            if not name.startswith("Case"):
                continue
            for cls in value if isinstance(value, list) else [value]:
                if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
                    found.add(_caseindex._case_id(cls.__name__))
    return sorted(found, key=_caseindex._sort_key)


def _selected(ids: list[str], include: list[str], exclude: list[str]) -> list[str]:
    def matches(case_id: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(case_id, p) for p in patterns)

    return [c for c in ids if (not include or matches(c, include)) and not matches(c, exclude)]


def _scale_timers(factor: float) -> None:
    """Every ``killAfter``/``closeAfter`` a case asks of its protocol lasts ``factor`` times longer."""
    from kosoku import _caseindex

    _caseindex.initialize_shims()
    case = importlib.import_module("case")  # the base class every case module imports
    original_init = case.Case.__init__

    class _Scaled:
        """The protocol as the case sees it: the same object, but with longer timers."""

        def __init__(self, protocol: Any) -> None:
            object.__setattr__(self, "_protocol", protocol)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._protocol, name)

        def __setattr__(self, name: str, value: Any) -> None:
            setattr(self._protocol, name, value)

        def killAfter(self, secs: float) -> None:  # noqa: N802 (the case API's name)
            self._protocol.killAfter(secs * factor)

        def closeAfter(self, secs: float) -> None:  # noqa: N802
            self._protocol.closeAfter(secs * factor)

    def init(self: Any, protocol: Any) -> None:
        original_init(self, protocol)
        self.p = _Scaled(protocol)

    case.Case.__init__ = init


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kosoku_run")
    parser.add_argument("--timer-scale", type=float, default=1.0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("-i", "--include", action="append", default=[])
    parser.add_argument("-x", "--exclude", action="append", default=[])
    args, rest = parser.parse_known_args()
    if args.list:
        for case_id in _selected(_case_ids(), args.include, args.exclude):
            print(case_id)
        return
    if args.timer_scale != 1.0:
        _scale_timers(args.timer_scale)
    from kosoku._cli import main as kosoku_main

    sys.argv = ["kosoku", *rest, *(a for i in args.include for a in ("-i", i)),
                *(a for x in args.exclude for a in ("-x", x))]
    kosoku_main()


if __name__ == "__main__":
    main()
