"""Helpers for tests that start real servers: a free loopback port, and stopping a process group by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group started with ``start_new_session=True``; SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def get_json(url: str, **query) -> dict:
    """GET ``url`` with ``query`` parameters from a server of a test's stack; the JSON body."""
    import json
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}" if query else url, timeout=10) as r:
        return json.load(r)


def post_json(url: str, body: dict) -> dict:
    """POST ``body`` as JSON to ``url``; the JSON answer."""
    import json
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)
