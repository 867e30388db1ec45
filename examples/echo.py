"""Echo handler for tgate: every byte a client sends comes back to it.

Give tgate ``python3 examples/echo.py`` as its handler command; it runs from a
checkout without installing anything. It works in every ``--framing`` mode: in
raw mode (the default) it echoes bytes as they come; in a framed mode it sends
each frame back as one frame (``--framing line``: each line, with tgate's
``\\n``; a client's half-close closes it once its echoes are out).
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


class Echo(ServerLoop):
    def process_client_data(self, client: Client, buf: bytes) -> int:
        client.write(buf)
        return len(buf)

    def process_frame(self, client: Client, frame: bytes) -> None:
        client.write(frame)  # one frame back: tgate frames it again


if __name__ == "__main__":
    Echo().run()
