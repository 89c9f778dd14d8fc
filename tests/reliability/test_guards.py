"""The suite's own guards (#15): no socket beyond 127.0.0.1, and in CI no skipped test the README
does not list with its reason."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO, allowed_skips


def test_a_socket_beyond_127_0_0_1_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        with pytest.raises(ConnectionRefusedError, match=r"beyond 127\.0\.0\.1"):
            s.connect(("10.255.255.1", 80))
    with pytest.raises(OSError, match=r"beyond 127\.0\.0\.1"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)


def test_every_skip_the_readme_allows_names_a_real_test():
    allowed = allowed_skips()
    assert allowed, "README lists no 'Tests that may skip'"
    for nodeid in allowed:
        path, name = nodeid.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), nodeid


def test_in_ci_an_unlisted_skip_fails_the_run(tmp_path):
    suite = REPO / "tests" / "conftest.py"
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(suite)!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_sessionfinish = suite.pytest_sessionfinish\n"
    )
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\ndef test_a():\n    pytest.skip('no reason given')\n"
    )
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    ci = subprocess.run(
        run, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "DEDUP_CI": "1"}
    )
    assert ci.returncode == 1 and "does not list under 'Tests that may skip'" in ci.stdout, ci.stdout
    local = subprocess.run(
        run, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "DEDUP_CI": "0"}
    )
    assert local.returncode == 0, local.stdout
