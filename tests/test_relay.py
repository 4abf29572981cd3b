"""The pure relay state machine: scripted events in, actions out, in both directions."""

from __future__ import annotations

import pytest

from wsrelay.relay import (
    CLIENT,
    LOST_CLOSE,
    UPSTREAM,
    Abort,
    BeginMessage,
    EndMessage,
    Relay,
    SendClose,
    SendFrame,
    SendMessage,
    other,
)

DIRECTIONS = pytest.mark.parametrize("src", [CLIENT, UPSTREAM])


def open_relay(chunk_size: int = 16) -> Relay:
    relay = Relay(chunk_size=chunk_size)
    assert relay.opened(UPSTREAM) == []
    assert relay.opened(CLIENT) == []
    return relay


def message(relay: Relay, src: str, *frames: bytes, binary: bool = False) -> list[object]:
    """One message of ``frames`` from ``src``'s peer; the actions it produced."""
    out: list[object] = list(relay.message_begin(src, binary))
    for i, frame in enumerate(frames):
        out += relay.frame_data(src, frame)
        if i < len(frames) - 1:
            out += relay.frame_end(src)
    out += relay.message_end(src)
    return out


@DIRECTIONS
def test_small_single_frame_message_is_one_frame(src: str) -> None:
    """A small one-frame message leaves as one frame, text as text and binary as binary."""
    relay = open_relay()
    dst = other(src)
    assert message(relay, src, b"hello") == [SendMessage(dst, b"hello", False)]
    assert message(relay, src, b"\x00\xff", binary=True) == [SendMessage(dst, b"\x00\xff", True)]
    assert message(relay, src) == [SendMessage(dst, b"", False)]
    c = relay.counters(src)
    assert (c.messages_in, c.octets_in) == (3, 7)
    assert (relay.counters(dst).messages_out, relay.counters(dst).octets_out) == (3, 7)


@DIRECTIONS
def test_fragments_are_relayed_as_each_frame_completes(src: str) -> None:
    """Each fragment goes on when its frame is complete, before the next one arrives."""
    relay = open_relay()
    dst = other(src)
    assert relay.message_begin(src, True) == []
    assert relay.frame_data(src, b"ab") == []
    assert relay.frame_end(src) == [BeginMessage(dst, True), SendFrame(dst, b"ab")]
    assert relay.frame_end(src) == []  # an empty fragment carries nothing
    assert relay.frame_data(src, b"cd") == []
    assert relay.frame_end(src) == [SendFrame(dst, b"cd")]
    assert relay.frame_data(src, b"ef") == []
    assert relay.message_end(src) == [SendFrame(dst, b"ef"), EndMessage(dst)]
    assert relay.counters(dst).messages_out == 1


@DIRECTIONS
def test_large_frame_is_cut_without_holding_more_than_chunk_size(src: str) -> None:
    """A frame larger than chunk_size streams out in chunks; nothing waits for the whole message."""
    relay = open_relay(chunk_size=4)
    dst = other(src)
    relay.message_begin(src, False)
    assert relay.frame_data(src, b"abc") == []
    assert relay.frame_data(src, b"def") == [BeginMessage(dst, False), SendFrame(dst, b"abcdef")]
    assert relay.frame_data(src, b"ghij") == [SendFrame(dst, b"ghij")]
    assert relay.message_end(src) == [EndMessage(dst)]
    assert relay.counters(src).octets_in == 10


@DIRECTIONS
def test_messages_wait_for_the_destination_to_open(src: str) -> None:
    """Messages (and a close) for a side not open yet are queued, in order, until it opens."""
    relay = Relay()
    relay.opened(src)
    dst = other(src)
    assert message(relay, src, b"one") == []
    assert message(relay, src, b"two", binary=True) == []
    assert relay.close_received(src, 4000, "done") == []
    assert relay.opened(dst) == [SendMessage(dst, b"one", False), SendMessage(dst, b"two", True),
                                 SendClose(dst, 4000, "done")]


@DIRECTIONS
@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 1012, 1013, 3000, 4999])
def test_close_code_and_reason_forwarded_and_answered_end_to_end(src: str, code: int) -> None:
    """A close goes to the other side; the closer is answered with the other peer's answer."""
    relay = open_relay()
    dst = other(src)
    assert relay.close_received(src, code, "why") == [SendClose(dst, code, "why")]
    # Until the answer arrives, messages toward the closer still flow.
    assert message(relay, dst, b"late") == [SendMessage(src, b"late", False)]
    assert relay.close_received(dst, code, "why") == [SendClose(src, code, "why", reply=True)]
    assert relay.lost(src) == []
    assert relay.lost(dst) == []
    assert relay.finished
    assert relay.counters(src).close_in == code and relay.counters(dst).close_out == code


@DIRECTIONS
def test_close_without_code_is_forwarded_without_code(src: str) -> None:
    """A close frame with no status code is relayed with no status code."""
    relay = open_relay()
    assert relay.close_received(src, None, "") == [SendClose(other(src), None, "")]


@DIRECTIONS
def test_closer_answered_with_own_code_when_other_side_drops(src: str) -> None:
    """If the other side vanishes before answering, the closer gets its own code back."""
    relay = open_relay()
    dst = other(src)
    relay.close_received(src, 4001, "bye")
    assert relay.lost(dst) == [SendClose(src, 4001, "bye", reply=True)]


@DIRECTIONS
def test_lost_side_closes_other_with_its_lost_code(src: str) -> None:
    """A side lost without a close frame: the other side gets 1001 (upstream) or 1011 (client)."""
    relay = open_relay()
    dst = other(src)
    code, reason = LOST_CLOSE[dst]
    assert relay.lost(src) == [SendClose(dst, code, reason)]
    assert code == (1001 if dst == UPSTREAM else 1011)
    assert message(relay, src, b"x") == []  # nothing from a lost side
    assert relay.lost(dst) == []
    assert relay.finished


@DIRECTIONS
def test_failed_side_closes_other_and_cuts_its_message(src: str) -> None:
    """A protocol error on one side (1002/1007/1009 to its peer) closes the other side; only that pair."""
    relay = open_relay(chunk_size=2)
    dst = other(src)
    relay.message_begin(src, False)
    assert relay.frame_data(src, b"abc") == [BeginMessage(dst, False), SendFrame(dst, b"abc")]
    code, reason = LOST_CLOSE[dst]
    assert relay.failed(src, 1009) == [SendClose(dst, code, reason)]
    assert relay.message_end(src) == []
    assert relay.counters(src).close_out == 1009
    # The failed peer's answer to wsrelay's 1009 is not forwarded anywhere.
    assert relay.close_received(src, 1009, "") == []


@DIRECTIONS
def test_failed_side_answers_pending_close_of_other(src: str) -> None:
    """If the other side's peer was waiting for an answer, it gets its own code back."""
    relay = open_relay()
    dst = other(src)
    assert relay.close_received(dst, 4002, "x") == [SendClose(src, 4002, "x")]
    assert relay.failed(src, 1002) == [SendClose(dst, 4002, "x", reply=True)]
    relay2 = open_relay()
    relay2.close_received(dst, 4002, "x")
    assert relay2.lost(src) == [SendClose(dst, 4002, "x", reply=True)]


@DIRECTIONS
def test_simultaneous_closes(src: str) -> None:
    """Both peers close at once: each close is taken as the answer to the other."""
    relay = open_relay()
    dst = other(src)
    assert relay.close_received(src, 4000, "a") == [SendClose(dst, 4000, "a")]
    # dst's peer had sent 4001 before it saw ours: its close answers the one we forwarded.
    assert relay.close_received(dst, 4001, "b") == [SendClose(src, 4001, "b", reply=True)]
    assert relay.lost(src) == [] and relay.lost(dst) == []


@DIRECTIONS
def test_nothing_sent_after_close(src: str) -> None:
    """Once a close went to a side, later messages for it are dropped."""
    relay = open_relay()
    relay.close_both(1001, "idle")
    assert message(relay, src, b"x") == []


@DIRECTIONS
def test_unsendable_codes_are_not_forwarded(src: str) -> None:
    """1005/1006/1015 never go on the wire: the close is relayed without a code."""
    relay = open_relay()
    assert relay.close_received(src, 1006, "abnormal") == [SendClose(other(src), None, "")]


def test_close_both_closes_open_sides_and_aborts_unopened() -> None:
    """Idle timeout or shutdown: 1001 to each open side; a side never opened is aborted."""
    relay = Relay()
    relay.opened(UPSTREAM)
    assert relay.close_both(1001, "idle timeout") == [Abort(CLIENT), SendClose(UPSTREAM, 1001, "idle timeout")]
    relay = open_relay()
    relay.close_received(CLIENT, 4003, "r")
    # The client's pending close is answered with its own code; the upstream already has one.
    assert relay.close_both(1001, "shutdown") == [SendClose(CLIENT, 4003, "r", reply=True)]


@DIRECTIONS
def test_lost_before_other_opens_aborts_it(src: str) -> None:
    """A side lost while the other has not opened yet: the other is aborted, its queue dropped."""
    relay = Relay()
    relay.opened(src)
    message(relay, src, b"queued")
    assert relay.lost(src) == [Abort(other(src))]
    assert relay.opened(other(src)) == []
    assert relay.finished


@DIRECTIONS
def test_interleaved_directions_are_independent(src: str) -> None:
    """A fragmented message one way does not disturb messages the other way."""
    relay = open_relay()
    dst = other(src)
    relay.message_begin(src, False)
    relay.frame_data(src, b"part1")
    assert relay.frame_end(src) == [BeginMessage(dst, False), SendFrame(dst, b"part1")]
    assert message(relay, dst, b"reply", binary=True) == [SendMessage(src, b"reply", True)]
    relay.frame_data(src, b"part2")
    assert relay.message_end(src) == [SendFrame(dst, b"part2"), EndMessage(dst)]


def _scenarios() -> list[tuple[str, list[tuple[str, tuple[object, ...]]]]]:
    """States a relay can be in when a message arrives (events after both sides opened, or not)."""
    return [
        ("open", [("opened", (UPSTREAM,)), ("opened", (CLIENT,))]),
        ("destination not open", [("opened", (CLIENT,)), ("opened", (CLIENT,))]),
        ("source closed", [("opened", (UPSTREAM,)), ("opened", (CLIENT,)), ("close_received", (CLIENT, 1000, ""))]),
        ("destination closed", [("opened", (UPSTREAM,)), ("opened", (CLIENT,)),
                                ("close_received", (UPSTREAM, 1000, ""))]),
        ("destination lost", [("opened", (UPSTREAM,)), ("opened", (CLIENT,)), ("lost", (UPSTREAM,))]),
    ]


@pytest.mark.parametrize("name,events", _scenarios())
@pytest.mark.parametrize("size", [0, 5, 16, 17, 40])
def test_whole_message_shortcut_is_exactly_the_general_path(name: str, events: list, size: int) -> None:
    """Relay.message (the lean path's call for a whole one-frame message) decides as
    message_begin + frame_data + message_end would, in every state: None ("send it as one frame")
    exactly when those would give one SendMessage, the same actions otherwise, the same counters."""
    from wsrelay.relay import run

    shortcut, general = Relay(chunk_size=16), Relay(chunk_size=16)
    run(shortcut, events)
    run(general, events)
    payload = bytes(range(size))
    got = shortcut.message(CLIENT, payload, True)
    expected = message(general, CLIENT, payload, binary=True)
    if got is None:
        assert expected == [SendMessage(UPSTREAM, payload, True)]
    else:
        assert got == expected and got != [SendMessage(UPSTREAM, payload, True)]
    for side in (CLIENT, UPSTREAM):
        assert shortcut.counters(side) == general.counters(side)
    assert (name in ("open", "destination closed") and size < 16) == (got is None)
