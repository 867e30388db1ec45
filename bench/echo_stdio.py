"""Echo over stdin/stdout, for process-per-connection serving:

    socat TCP-LISTEN:PORT,fork,reuseaddr,backlog=511 EXEC:"python3 bench/echo_stdio.py"

Each read is written back at once (raw os.read/os.write on fds 0 and 1: no
buffering), until stdin reaches EOF.
"""

import os

while True:
    data = os.read(0, 65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
