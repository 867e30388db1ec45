"""What the gateway counts, for /metrics and /status (sans-IO).

The hot path only ever adds to plain attributes (``m.bytes_received += n``):
no locks, no labels to look up, no allocation. Gauges (clients now, bytes
queued...) are read from the gateway's state when scraped, not kept here.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the reply-latency histogram buckets: from
#: 100 µs to 10 s, roughly x2.5 apart (Prometheus' default buckets, extended
#: down because a local handler answers in well under a millisecond).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Why a connection ended (the disconnect reasons of docs/protocol.md).
CLOSE_REASONS = ("eof", "reset", "overflow", "closed", "shutdown", "malformed", "error",
                 "quarantined", "slow", "idle")
#: Why a handler process was replaced.
RESTART_CAUSES = ("crash", "hang", "reload", "link")


class Metrics:
    """Counters since start. Every attribute is a monotonic total."""

    def __init__(self) -> None:
        self.connections_accepted = 0
        #: connections closed at once by --max-clients-per-ip
        self.connections_refused = 0
        self.connections_closed: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        #: messages written to handlers (data, frame, eof, connect, disconnect, tick, hello)
        self.messages_to_handler = 0
        #: lines read from handlers
        self.lines_from_handler = 0
        self.handler_restarts: dict[str, int] = dict.fromkeys(RESTART_CAUSES, 0)
        self.publishes = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.latency_sum = 0.0

    def closed(self, reason: str) -> None:
        self.connections_closed[reason] = self.connections_closed.get(reason, 0) + 1

    def restarted(self, cause: str) -> None:
        self.handler_restarts[cause] = self.handler_restarts.get(cause, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        """A data message's reply came `seconds` after it was sent."""
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
