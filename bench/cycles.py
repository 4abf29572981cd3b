"""What only CPython's cyclic garbage collector frees after relayed pairs and HTTP requests, in memory.

Runs wsrelay's site and gateway on the test suite's in-memory harness with socket-like transports
(``tests/test_cycles.py``: a lost connection lets go of its protocol, as Twisted's TCP transport
does), with the collector off, then collects once with ``gc.DEBUG_SAVEALL`` and prints, per pair
(or per request):

- the objects of cyclic garbage by type;
- the cycles themselves: the garbage's strongly connected components grouped by the types in
  them, each with one shortest reference cycle through it, edge by edge (``.attr``, ``[key]``,
  ``[i]``, ``__self__`` of a bound method, ``cell`` of a closure...), which is where to cut;
- the GC-tracked objects alive per open pair, and per handshake in flight (``inflight``).

Usage, from the repository root::

    .venv/bin/python bench/cycles.py [N] [--phases PHASE,...] [--cycles K] [--wsrelay DIR]

Phases (default: all; N = 200): ``open``: N pairs opened (handshakes, a message each way), kept
open; ``close``: those N closed cleanly (the client's close 1000, the upstream's answer);
``inflight``: the GC-tracked objects alive per handshake while it waits for its upstream's
connection, then for its 101, then per open pair; ``drop``: N whole pairs whose clients are simply
gone (as in a reconnect storm); ``tunnel``: N whole pairs with ``ws_mode = tunnel``; ``refused``:
N handshakes the upstream answers with 403; ``unreachable``: N handshakes whose upstream
connection is refused (502 after the retry); ``http``: N GETs, each on its own client connection.
``--wsrelay DIR``: wsrelay imported from another checkout (a worktree of the base commit), the
harness from this one: the same measurement of two versions.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prefer_checkout(argv: list[str]) -> None:
    """With ``--wsrelay DIR`` in ``argv``, wsrelay is imported from that checkout (e.g. a worktree
    of the base commit) and the harness (``tests/``) from this one: an A/B under one measurement."""
    if "--wsrelay" in argv[:-1]:
        other = os.path.abspath(argv[argv.index("--wsrelay") + 1])
        sys.path.insert(0, other)
        importlib.import_module("wsrelay.gateway")  # imported now, from there
        sys.path.remove(other)
    sys.path.insert(0, ROOT)


prefer_checkout(sys.argv)

from tests.test_cycles import (  # noqa: E402
    CLOSING,
    Peer,
    SocketHarness,
    Upstream,
    by_type,
    close_pair,
    collector_off,
    open_pair,
    pairs,
    refusals,
    requests,
)
from tests.test_websocket import handshake  # noqa: E402


class Silent(Upstream):
    """An upstream that answers the handshake only when told (:meth:`answer`)."""

    def dataReceived(self, data: bytes) -> None:
        if not self.received:
            self.request = data
            self.received = b"held"
            return
        super().dataReceived(data)

    def answer(self) -> None:
        self.received = b""
        Upstream.dataReceived(self, self.request)


def type_name(o: Any) -> str:
    t = type(o)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def named_edges(o: Any) -> Iterator[tuple[str, Any]]:
    """``o``'s references with a name where one can be given."""
    if isinstance(o, dict):
        for k, v in o.items():
            yield f"[{k!r:.40}]", v
            yield "(key)", k
        return
    if isinstance(o, (list, tuple)):
        for i, v in enumerate(o):
            yield f"[{i}]", v
        return
    if isinstance(o, (set, frozenset)):
        for v in o:
            yield "(item)", v
        return
    if isinstance(o, types.MethodType):
        yield "__self__", o.__self__
        yield "__func__", o.__func__
        return
    if isinstance(o, types.CellType):
        try:
            yield "cell", o.cell_contents
        except ValueError:
            pass
        return
    if isinstance(o, types.FunctionType):
        for name, cell in zip(o.__code__.co_freevars, o.__closure__ or ()):
            yield f"<closure {name}>", cell
        yield "__defaults__", o.__defaults__
        return
    if isinstance(o, types.FrameType):
        yield "f_back", o.f_back
        for k, v in o.f_locals.items():
            yield f"<local {k}>", v
        return
    if isinstance(o, types.TracebackType):
        yield "tb_frame", o.tb_frame
        yield "tb_next", o.tb_next
        return
    if isinstance(o, BaseException):
        yield "__traceback__", o.__traceback__
        yield "__context__", o.__context__
        yield "__cause__", o.__cause__
    d = getattr(o, "__dict__", None)
    if isinstance(d, dict):
        yield "__dict__", d
        for k, v in d.items():
            yield f".{k}", v
    for cls in type(o).__mro__:
        for slot in cls.__dict__.get("__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(o, slot):
                yield f".{slot}", getattr(o, slot)


def edge_name(a: Any, b: Any) -> str:
    for name, v in named_edges(a):
        if v is b:
            return name
    return "->"


def components(objects: list[Any]) -> list[list[Any]]:
    """Strongly connected components (Tarjan, iterative) of the reference graph among ``objects``;
    only those that are cycles (more than one object, or one referring to itself)."""
    ids = {id(o): o for o in objects}
    graph = {i: [id(r) for r in gc.get_referents(o) if id(r) in ids] for i, o in ids.items()}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    out.append([ids[i] for i in comp])
    return out


def referents(o: Any, members: dict[int, Any]) -> Iterator[Any]:
    """``o``'s referents, through an instance ``__dict__`` made since the garbage was found
    (CPython 3.11 makes one when it is first asked for, as :func:`named_edges` does)."""
    for r in gc.get_referents(o):
        if type(r) is dict and id(r) not in members:
            yield from gc.get_referents(r)
        else:
            yield r


def shortest_cycle(start: Any, members: dict[int, Any]) -> list[Any]:
    """A shortest reference cycle from ``start`` back to it, inside ``members``."""
    prev: dict[int, Any] = {}
    frontier = [start]
    seen = {id(start)}
    while frontier:
        nxt = []
        for o in frontier:
            for r in referents(o, members):
                if r is start:
                    path = [o]
                    while path[-1] is not start:
                        path.append(prev[id(path[-1])])
                    return [start, *reversed(path[:-1]), start] if o is not start else [start, start]
                if id(r) in members and id(r) not in seen:
                    seen.add(id(r))
                    prev[id(r)] = o
                    nxt.append(r)
        frontier = nxt
    return [start]


def describe(path: list[Any]) -> str:
    parts = [type_name(path[0])]
    for a, b in zip(path, path[1:]):
        parts.append(f" {edge_name(a, b)}-> {type_name(b)}")
    return "".join(parts)


def starts(comp: list[Any]) -> list[Any]:
    """One object per type of the component, wsrelay's own first: where to show a cycle from."""
    chosen: dict[str, Any] = {}
    for o in comp:
        chosen.setdefault(type_name(o), o)
    return sorted(chosen.values(), key=lambda o: (not type(o).__module__.startswith("wsrelay"),
                                                  not type(o).__module__.startswith("autobahn"), type_name(o)))


def report(title: str, per: int, garbage: list[Any], cycles: int, extra: str = "") -> None:
    print(f"\n== {title}: {len(garbage) / per:.1f} objects of cyclic garbage per unit (N = {per}){extra}")
    for name, n in by_type(garbage).most_common(30):
        print(f"  {n / per:7.2f}  {name}")
    comps = components(garbage)
    groups: dict[tuple[tuple[str, int], ...], list[list[Any]]] = defaultdict(list)
    for comp in comps:
        groups[tuple(sorted(Counter(type_name(o) for o in comp).items()))].append(comp)
    in_cycles = sum(len(c) for c in comps)
    print(f"  cycles: {len(comps) / per:.2f} strongly connected components per unit, {in_cycles / per:.1f} objects"
          f" in them, {(len(garbage) - in_cycles) / per:.1f} hanging off them")
    for key, group in sorted(groups.items(), key=lambda kv: -sum(len(c) for c in kv[1]))[:cycles]:
        size = sum(len(c) for c in group)
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(key, key=lambda kv: -kv[1])[:8])
        print(f"\n  {len(group) / per:.2f} per unit, {size / len(group):.0f} objects each: {kinds}")
        comp = group[0]
        members = {id(o): o for o in comp}
        shown = 0
        for start in starts(comp):
            if shown == 6:
                break
            path = shortest_cycle(start, members)
            text = describe(path)
            print(f"    {text}")
            shown += 1


def measure(run: Callable[[], object]) -> tuple[list[Any], int]:
    """Cyclic garbage of ``run()`` and the net count of GC-tracked objects it added."""
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        before = len(gc.get_objects())
        gc.set_debug(gc.DEBUG_SAVEALL)
        run()
        added = len(gc.get_objects()) - before
        gc.collect()
        found = list(gc.garbage)
        gc.set_debug(0)
        gc.garbage.clear()
    finally:
        if was:
            gc.enable()
    return found, added


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"

#: Phases run on a harness of their own: (route settings, what one unit is, title).
WHOLE: dict[str, tuple[str, Callable[[SocketHarness, int], None], str]] = {
    "drop": ("", lambda h, n: pairs(h, n, clean=False), "whole pair, client gone without a close (as in a storm)"),
    "tunnel": ("ws_mode = tunnel", pairs, "whole tunnelled pair (ws_mode = tunnel), closed cleanly"),
    "refused": ("", lambda h, n: refusals(h, n, FORBIDDEN), "handshake refused by the upstream (403)"),
    "unreachable": ("", lambda h, n: refusals(h, n, None), "handshake, upstream connection refused twice (502)"),
    "http": ("", requests, "HTTP GET on its own client connection (upstream connection pooled)"),
    "http-close": ("", lambda h, n: requests(h, n, CLOSING),
                   "HTTP GET on its own client connection and its own upstream connection"),
}


def open_then_close(n: int, phases: list[str], cycles: int) -> None:
    """``open``: n pairs opened and kept; ``close``: then closed cleanly, each phase measured."""
    h = SocketHarness()
    pairs(h, 10)  # one-time allocations (factories, caches)
    opened: list[Any] = []

    def open_all() -> None:
        opened.extend(open_pair(h) for _ in range(n))
        h.forget()

    def close_all() -> None:
        for client, upstream in opened:
            close_pair(h, client, upstream, clean=True)
        opened.clear()
        h.forget()

    garbage, added = measure(open_all)
    if "open" in phases:
        report("open (handshake, a message each way; kept open)", n, garbage, cycles,
               f"; {(added - len(garbage)) / n:.0f} tracked objects alive per open pair, harness's peers included")
    del garbage[:]  # the next phase's objects must not be kept alive by it
    garbage, _ = measure(close_all)
    if "close" in phases:
        report("close (client's 1000, upstream's answer)", n, garbage, cycles)


def in_flight(n: int) -> None:
    """GC-tracked objects alive per handshake at its two waits, and per open pair."""
    h = SocketHarness()
    pairs(h, 10)
    print(f"\n== handshakes in flight: GC-tracked objects alive per handshake (harness's peers included; N = {n})")
    with collector_off():
        gc.collect()
        base = len(gc.get_objects())

        def say(what: str) -> None:
            print(f"  {(len(gc.get_objects()) - base) / n:6.0f}  {what}")

        clients = [Peer() for _ in range(n)]
        for client in clients:
            h.connect_client(client)
            client.transport.write(handshake())
        h.settle()
        say("the client's request read, the upstream connection pending")
        upstreams = [Silent() for _ in range(n)]
        for i, upstream in enumerate(upstreams):
            h.accept_raw(upstream, index=i)
        say("the upstream connected, its 101 awaited")
        for upstream in upstreams:
            upstream.answer()
        h.settle()
        h.forget()
        say("both sides open (lean legs)")
        for client, upstream in zip(clients, upstreams):
            close_pair(h, client, upstream, clean=False)
        h.forget()
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=200)
    parser.add_argument("--phases", default="open,close,inflight," + ",".join(WHOLE))
    parser.add_argument("--cycles", type=int, default=12, help="cycle groups shown per phase")
    parser.add_argument("--wsrelay", metavar="DIR", help="import wsrelay from this checkout")
    args = parser.parse_args()
    n, phases = args.n, args.phases.split(",")
    import wsrelay

    print(f"wsrelay from {os.path.dirname(os.path.dirname(os.path.abspath(wsrelay.__file__)))}")
    if {"open", "close"} & set(phases):
        open_then_close(n, phases, args.cycles)
    if "inflight" in phases:
        in_flight(n)
    for name, (settings, run, title) in WHOLE.items():
        if name in phases:
            h = SocketHarness(settings)
            run(h, 10)
            garbage, _ = measure(lambda: run(h, n))  # noqa: B023 (called at once, in this turn)
            report(title, n, garbage, args.cycles)
            del garbage[:]


if __name__ == "__main__":
    main()
