"""Line chat handler for tgate.

- When a client connects, every other client gets ``* {id} joined\\n``.
- Each complete line a client sends (terminated by ``\\n``; the line is its
  bytes without the ``\\n`` and without one trailing ``\\r``) goes to every
  other client as ``{id}: {line}\\n``. A partial line waits for more bytes; an
  unterminated last line at end of input is dropped.
- When a client is gone, every other client gets ``* {id} left\\n``.

These exact bytes are the spec: a version of this example in another language
(e.g. with the Node adapter) must behave byte for byte the same.

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


class Chat(ServerLoop):
    def others(self, client: Client) -> list[Client]:
        return [c for c in self.clients.values() if c is not client]

    def client_connected(self, client: Client) -> None:
        self.broadcast(self.others(client), f"* {client.id} joined\n")

    def process_client_data(self, client: Client, buf: bytes) -> int:
        end = buf.find(b"\n")
        if end < 0:
            return 0  # partial line: wait for the rest
        line = buf[:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        self.broadcast(self.others(client), b"%d: %s\n" % (client.id, line))
        return end + 1

    def client_disconnected(self, client: Client) -> None:
        self.broadcast(self.others(client), f"* {client.id} left\n")


if __name__ == "__main__":
    Chat().run()
