"""Line chat handler for tgate.

- When a client connects, every other client gets ``* {id} joined\\n`` (not
  again when tgate replays its ``connect`` to a restarted handler process:
  ``client.replayed``).
- Each complete line a client sends (terminated by ``\\n``; the line is its
  bytes without the ``\\n`` and without one trailing ``\\r``) goes to every
  other client as ``{id}: {line}\\n``. A partial line waits for more bytes; an
  unterminated last line at end of input is still a line (without one
  trailing ``\\r``), as tgate's ``--framing line`` delivers it.
- When a client is gone, every other client gets ``* {id} left\\n``.
- A client that half-closes is closed once its last line went out.

These exact bytes are the spec: a version of this example in another language
(e.g. with the Node adapter) must behave byte for byte the same, and so must
this handler under ``tgate --framing line`` (tgate then splits the lines and
ends each write with ``\\n``) and under the default ``--framing raw`` (the
handler splits the lines itself).

The other clients are reached through a tgate channel, not a list of clients:
each client is subscribed to ``chat`` when it connects, and every message is
published to ``chat`` excluding its author (tgate removes a client from its
channels when it disconnects). So the handler works unchanged with
``tgate --workers N``, where each handler process serves only some of the
clients: a message published by one worker reaches the clients of all.

Give tgate ``python3 examples/chat.py`` as its handler command; it runs from a
checkout without installing anything.
"""

from __future__ import annotations

import os
import sys

try:
    from tgate_handler import Client, ServerLoop
except ImportError:  # running from a checkout: use the adapter next door
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "adapters", "python")
    )
    from tgate_handler import Client, ServerLoop


CHANNEL = "chat"


class Chat(ServerLoop):
    def say(self, line: bytes, exclude: Client | None = None) -> None:
        """One line to every client in the chat but ``exclude``, whichever
        worker serves them. In a framed mode each write is one line (tgate adds
        the line end); in raw mode the handler ends it."""
        self.publish(CHANNEL, line if self.framing != "raw" else line + b"\n", exclude=exclude)

    def client_connected(self, client: Client) -> None:
        client.subscribe(CHANNEL)
        if not client.replayed:  # a restarted handler: the room saw it join
            self.say(b"* %d joined" % client.id, exclude=client)

    # --framing raw: find the lines in the bytes.
    # One line per call, without copying the rest of the buffer each time
    # (ServerLoop's signature: the unconsumed bytes are buf[pos:pos+length]).
    def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
        end = buf.find(b"\n", pos, pos + length)
        if end >= 0:
            self.process_frame(client, buf[pos:end].removesuffix(b"\r"))
            return end + 1 - pos
        if client.eof:  # an unterminated last line
            self.process_frame(client, buf[pos : pos + length].removesuffix(b"\r"))
            return length
        return 0  # partial line: wait for the rest

    # --framing line: tgate found the line.
    def process_frame(self, client: Client, frame: bytes) -> None:
        self.say(b"%d: %s" % (client.id, frame), exclude=client)

    def client_disconnected(self, client: Client) -> None:
        # tgate has already taken the client out of the channel.
        self.say(b"* %d left" % client.id)


if __name__ == "__main__":
    Chat().run()
