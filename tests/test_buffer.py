"""Unit tests for tgate.buffer.ClientBuffer (sans-IO, plain bytes)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tgate.buffer import DEFAULT_BUFSIZE, MAX_BUFSIZE, ClientBuffer
from tgate.protocol import HandlerError


def snapshot(b: ClientBuffer) -> tuple[object, ...]:
    return (bytes(b), b.seen, b.awaiting, b.capacity, b.eof, b.eof_sent, b.room())


# ------------------------------------------------------------------ construction


def test_defaults() -> None:
    b = ClientBuffer()
    assert b.capacity == DEFAULT_BUFSIZE == 128
    assert b.max_size == MAX_BUFSIZE == 65536
    assert b.room() == 128
    assert len(b) == 0
    assert bytes(b) == b""
    assert not b.awaiting and not b.eof and not b.eof_sent and not b.finished
    assert b.take_message() is None


@pytest.mark.parametrize("bufsize", [1, 7, 16])
def test_initial_room_is_bufsize(bufsize: int) -> None:
    assert ClientBuffer(bufsize, 64).room() == bufsize


@pytest.mark.parametrize(("bufsize", "max_bufsize"), [(0, 16), (-1, 16), (17, 16), (2, 1)])
def test_invalid_sizes_rejected(bufsize: int, max_bufsize: int) -> None:
    with pytest.raises(ValueError):
        ClientBuffer(bufsize, max_bufsize)


def test_bufsize_equal_to_max_is_allowed() -> None:
    b = ClientBuffer(8, 8)
    b.feed(b"x" * 8)
    assert b.capacity == 8
    assert b.room() == 0


# ------------------------------------------------------------------ growth


def test_doubles_when_a_read_fills_it() -> None:
    b = ClientBuffer(4, 64)
    b.feed(b"abcd")
    assert b.capacity == 8
    assert b.room() == 4
    b.feed(b"efgh")
    assert b.capacity == 16
    assert b.room() == 8


def test_no_growth_when_read_does_not_fill() -> None:
    b = ClientBuffer(4, 64)
    b.feed(b"abc")
    assert b.capacity == 4
    assert b.room() == 1
    b.feed(b"d")  # now it fills
    assert b.capacity == 8


def test_growth_capped_at_max() -> None:
    b = ClientBuffer(3, 10)
    b.feed(b"x" * 3)
    assert b.capacity == 6
    b.feed(b"x" * 3)
    assert b.capacity == 10  # min(12, 10)
    b.feed(b"x" * 4)
    assert b.capacity == 10
    assert b.room() == 0
    assert len(b) == 10


def test_capacity_never_shrinks_after_consume() -> None:
    b = ClientBuffer(4, 64)
    b.feed(b"abcd")
    b.take_message()
    b.consume(4)
    assert len(b) == 0
    assert b.capacity == 8
    assert b.room() == 8


def test_room_is_capacity_minus_held() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"abc")
    assert b.room() == 5
    assert b.take_message() == (b"abc", False)
    b.consume(1)
    assert b.room() == 6


# ------------------------------------------------------------------ feed limits


def test_feed_more_than_room_raises_and_changes_nothing() -> None:
    b = ClientBuffer(4, 64)
    before = snapshot(b)
    with pytest.raises(RuntimeError):
        b.feed(b"12345")
    assert snapshot(b) == before


def test_feed_exactly_room_ok_then_more_raises() -> None:
    b = ClientBuffer(4, 4)
    b.feed(b"1234")
    with pytest.raises(RuntimeError):
        b.feed(b"5")
    assert bytes(b) == b"1234"


def test_feed_after_eof_raises() -> None:
    b = ClientBuffer(4, 64)
    b.feed_eof()
    assert b.room() == 0
    with pytest.raises(RuntimeError):
        b.feed(b"x")
    b.feed(b"")  # an empty read is harmless
    assert len(b) == 0


# ------------------------------------------------------------------ take_message


def test_take_message_nothing_new() -> None:
    b = ClientBuffer(8, 64)
    assert b.take_message() is None
    assert not b.awaiting


def test_take_message_returns_bytes_and_awaits() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"hi")
    assert b.take_message() == (b"hi", False)
    assert b.awaiting
    assert b.seen == 2


def test_at_most_one_message_awaiting() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"ab")
    assert b.take_message() == (b"ab", False)
    b.feed(b"cd")
    assert b.take_message() is None  # still awaiting the reply
    b.feed(b"ef")
    assert b.take_message() is None
    b.consume(0)
    # the next message holds only what the handler has not been sent
    assert b.take_message() == (b"cdef", False)
    assert b.seen == 6


def test_take_message_returns_only_new_bytes_after_partial_consume() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"hello")
    b.take_message()
    b.consume(2)
    assert bytes(b) == b"llo"
    assert b.seen == 3
    assert b.take_message() is None  # nothing new
    b.feed(b" world")
    assert b.take_message() == (b" world", False)
    assert b.seen == 9


def test_take_message_after_consume_zero_and_nothing_new() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.take_message()
    b.consume(0)
    assert b.take_message() is None
    assert not b.awaiting


def test_take_message_copies_bytes() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    msg = b.take_message()
    assert msg is not None
    assert type(msg[0]) is bytes
    b.consume(3)
    assert msg[0] == b"abc"


# ------------------------------------------------------------------ consume


def test_consume_all_empties() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.take_message()
    b.consume(3)
    assert len(b) == 0
    assert b.seen == 0
    assert not b.awaiting


def test_consume_all_seen_keeps_unseen() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.take_message()
    b.feed(b"de")
    b.consume(3)
    assert bytes(b) == b"de"
    assert b.seen == 0
    assert b.take_message() == (b"de", False)


def _awaiting_buffer() -> ClientBuffer:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.take_message()
    b.feed(b"de")  # held, not yet seen
    return b


def test_consume_without_awaiting_raises_unchanged() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    before = snapshot(b)
    with pytest.raises(HandlerError):
        b.consume(0)
    assert snapshot(b) == before


def test_consume_twice_raises_unchanged() -> None:
    b = _awaiting_buffer()
    b.consume(1)
    before = snapshot(b)
    with pytest.raises(HandlerError):
        b.consume(0)
    assert snapshot(b) == before


@pytest.mark.parametrize("n", [-1, -100, 4, 5, 6, 1 << 40])
def test_consume_invalid_n_raises_unchanged(n: int) -> None:
    b = _awaiting_buffer()
    before = snapshot(b)
    with pytest.raises(HandlerError):
        b.consume(n)
    assert snapshot(b) == before
    assert b.awaiting
    b.consume(3)  # still usable: the valid reply is accepted
    assert bytes(b) == b"de"


def test_consume_more_than_seen_but_not_more_than_held_rejected() -> None:
    # the handler holds only what it was sent, not bytes tgate holds back
    b = _awaiting_buffer()
    assert len(b) == 5 and b.seen == 3
    with pytest.raises(HandlerError):
        b.consume(4)


# ------------------------------------------------------------------ overflow


def test_full_at_max_with_nothing_consumed_has_no_room_and_nothing_to_send() -> None:
    # (the core disconnects such a client: "overflow")
    b = ClientBuffer(4, 8)
    b.feed(b"x" * 4)
    b.take_message()
    b.consume(0)
    assert b.room() == 4  # full below max: it grew
    b.feed(b"y" * 4)
    assert len(b) == 8 and b.room() == 0
    assert b.take_message() == (b"yyyy", False)
    b.consume(0)
    assert b.room() == 0
    assert b.take_message() is None


def test_consuming_from_a_full_buffer_makes_room() -> None:
    b = ClientBuffer(8, 8)
    b.feed(b"x" * 8)
    b.take_message()
    b.consume(1)
    assert b.room() == 1


# ------------------------------------------------------------------ eof


def test_eof_room_zero() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"ab")
    b.feed_eof()
    assert b.room() == 0


def test_eof_message_once_with_remaining_bytes() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"ab")
    b.feed_eof()
    assert b.take_message() == (b"ab", True)
    assert b.eof_sent
    assert not b.finished
    assert b.take_message() is None
    b.consume(1)
    assert b.finished
    assert b.take_message() is None


def test_eof_message_even_when_empty() -> None:
    b = ClientBuffer(8, 64)
    b.feed_eof()
    assert b.take_message() == (b"", True)
    assert b.awaiting
    assert not b.finished
    b.consume(0)
    assert b.finished
    assert b.take_message() is None


def test_eof_after_everything_seen_sends_empty_eof() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"abc")
    assert b.take_message() == (b"abc", False)
    b.consume(0)
    b.feed_eof()
    assert b.take_message() == (b"", True)
    b.consume(0)
    assert b.finished
    assert bytes(b) == b"abc"  # unconsumed bytes are simply left (discarded by the caller)


def test_eof_while_awaiting_waits_for_reply() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"abc")
    b.take_message()
    b.feed(b"de")
    b.feed_eof()
    assert b.take_message() is None
    assert not b.eof_sent
    b.consume(3)
    assert not b.finished  # the handler has not been told yet
    assert b.take_message() == (b"de", True)
    b.consume(2)
    assert b.finished
    assert len(b) == 0


def test_not_finished_without_eof() -> None:
    b = ClientBuffer(8, 64)
    b.feed(b"abc")
    b.take_message()
    b.consume(3)
    assert not b.finished


# ------------------------------------------------------------------ rewind


def test_rewind_makes_everything_resendable() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"hello")
    b.take_message()
    b.consume(2)
    b.feed(b" you")
    assert b.take_message() == (b" you", False)
    assert b.awaiting
    b.feed(b"!")  # arrived while awaiting
    b.rewind()
    assert not b.awaiting
    assert b.seen == 0
    # ALL unconsumed bytes, not only the unsent ones
    assert b.take_message() == (b"llo you!", False)
    assert b.awaiting


def test_rewind_with_nothing_awaiting() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.take_message()
    b.consume(0)
    b.rewind()
    assert b.take_message() == (b"abc", False)


def test_rewind_empty_buffer_nothing_to_send() -> None:
    b = ClientBuffer(16, 64)
    b.rewind()
    assert b.take_message() is None


def test_rewind_resends_eof() -> None:
    b = ClientBuffer(16, 64)
    b.feed(b"abc")
    b.feed_eof()
    assert b.take_message() == (b"abc", True)
    b.rewind()
    assert not b.eof_sent
    assert not b.finished
    assert b.take_message() == (b"abc", True)
    b.consume(3)
    assert b.finished


def test_rewind_resends_empty_eof() -> None:
    b = ClientBuffer(16, 64)
    b.feed_eof()
    assert b.take_message() == (b"", True)
    b.rewind()
    assert b.take_message() == (b"", True)


def test_rewind_keeps_capacity_and_eof() -> None:
    b = ClientBuffer(4, 64)
    b.feed(b"abcd")
    b.feed_eof()
    b.rewind()
    assert b.capacity == 8
    assert b.eof
    assert b.room() == 0


def test_rewind_resends_a_full_buffer() -> None:
    b = ClientBuffer(4, 4)
    b.feed(b"abcd")
    b.take_message()
    b.consume(0)
    assert b.take_message() is None
    b.rewind()
    assert b.take_message() == (b"abcd", False)  # the new handler has not seen it


# ------------------------------------------------------------------ model-based


class BufferModel(RuleBasedStateMachine):
    """Random feed/take/consume/eof/rewind sequences against a simple model:
    the fed stream, how much of it was consumed, and how much the handler saw."""

    def __init__(self) -> None:
        super().__init__()
        self.bufsize = 3
        self.max = 24
        self.b = ClientBuffer(self.bufsize, self.max)
        self.stream = b""  # every byte fed
        self.consumed = b""  # concatenation of consumed bytes
        self.seen = 0  # bytes of the unconsumed part the handler holds
        self.awaiting = False
        self.eof = False
        self.eof_sent = False
        self.last_capacity = self.bufsize
        self.counter = 0

    @property
    def held(self) -> bytes:
        return self.stream[len(self.consumed) :]

    @rule(size=st.integers(min_value=1, max_value=30))
    def feed(self, size: int) -> None:
        room = self.b.room()
        if size > room:
            before = snapshot(self.b)
            with pytest.raises(RuntimeError):
                self.b.feed(b"z" * size)
            assert snapshot(self.b) == before
            return
        # distinct bytes so that any reordering or duplication shows
        data = bytes((self.counter + i) % 256 for i in range(size))
        self.counter += size
        cap = self.b.capacity
        self.b.feed(data)
        self.stream += data
        if len(self.held) == cap and cap < self.max:
            assert self.b.capacity == min(2 * cap, self.max)
        else:
            assert self.b.capacity == cap

    @rule()
    def take(self) -> None:
        msg = self.b.take_message()
        if self.awaiting:
            assert msg is None
            return
        new = self.held[self.seen :]
        if not new and (not self.eof or self.eof_sent):
            assert msg is None
            return
        if self.eof:
            self.eof_sent = True
        assert msg == (new, self.eof_sent)
        self.seen = len(self.held)
        self.awaiting = True

    @rule(n=st.integers(min_value=-3, max_value=30))
    def consume(self, n: int) -> None:
        if not self.awaiting or not 0 <= n <= self.seen:
            before = snapshot(self.b)
            with pytest.raises(HandlerError):
                self.b.consume(n)
            assert snapshot(self.b) == before
            return
        self.b.consume(n)
        self.consumed += self.held[:n]
        self.seen -= n
        self.awaiting = False

    @precondition(lambda self: self.awaiting)
    @rule(data=st.data())
    def consume_valid(self, data: st.DataObject) -> None:
        self.consume(data.draw(st.integers(min_value=0, max_value=self.seen)))

    @rule()
    def feed_eof(self) -> None:
        self.b.feed_eof()
        self.eof = True

    @rule()
    def rewind(self) -> None:
        self.b.rewind()
        self.seen = 0
        self.awaiting = False
        self.eof_sent = False

    @invariant()
    def matches_model(self) -> None:
        b = self.b
        assert self.consumed == self.stream[: len(self.consumed)]
        assert bytes(b) == self.held
        assert len(b) <= self.max
        assert len(b) <= b.capacity <= self.max
        assert b.capacity >= self.last_capacity
        self.last_capacity = b.capacity
        assert b.seen == self.seen
        assert b.awaiting == self.awaiting
        assert b.eof == self.eof
        assert b.eof_sent == self.eof_sent
        assert b.room() == (0 if self.eof else b.capacity - len(b))
        assert b.finished == (self.eof_sent and not self.awaiting)


BufferModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, derandomize=True, database=None
)
TestBufferModel = BufferModel.TestCase
