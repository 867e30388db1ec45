"""Run the Node adapter's own `node --test` suite as part of pytest, so that
one test command covers both adapters."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO, need


def test_node_adapter_suite() -> None:
    node = need("node")
    r = subprocess.run([node, "--test", "adapters/node/test/"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout
    # node --test on a directory with no tests exits 0: require tests ran.
    m = re.search(r"^# tests (\d+)$", r.stdout, re.MULTILINE)
    assert m and int(m.group(1)) > 0, "node --test ran no tests:\n" + r.stdout[-2000:]
    assert re.search(rf"^# pass {m.group(1)}$", r.stdout, re.MULTILINE), r.stdout[-2000:]
