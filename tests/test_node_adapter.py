"""Run the Node adapter's own `node --test` suite as part of pytest, so that
one test command covers both adapters."""

from __future__ import annotations

import subprocess

from conftest import REPO, need


def test_node_adapter_suite() -> None:
    node = need("node")
    r = subprocess.run([node, "--test", "adapters/node/test/"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout
