"""Echo handler for tgate: every byte a client sends comes back to it.

Give tgate ``python3 examples/echo.py`` as its handler command; it runs from a
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


class Echo(ServerLoop):
    def process_client_data(self, client: Client, buf: bytes) -> int:
        client.write(buf)
        return len(buf)


if __name__ == "__main__":
    Echo().run()
