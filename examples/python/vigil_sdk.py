"""A small client for vigil's SDK layer.

A run supervised by `vigil run` finds a unix socket in VIGIL_SDK_SOCKET; each line sent on it
is one JSON event about the run itself. vigil validates, caps, masks and timestamps what it
receives, writes it to the bundle's layers/sdk.ndjson, counts it as progress, and correlates
each tool call with the kernel events of the calling process and its children.

Outside vigil (no VIGIL_SDK_SOCKET) every call is a no-op, so instrumented code runs anywhere.

    from vigil_sdk import Vigil

    vigil = Vigil(sdk_name="my-agent", sdk_version="1.0")
    with vigil.tool_call("shell", data={"cmd": "make"}):
        subprocess.run(["make"])
    vigil.checkpoint("built")
    vigil.run_finished()
"""

import contextlib
import itertools
import json
import os
import socket
import time

EVENTS = (
    "tool_call_started",
    "tool_call_completed",
    "checkpoint",
    "run_finished",
    "run_failed",
)


class Vigil:
    def __init__(self, sdk_name=None, sdk_version=None, path=None):
        self.sdk_name = sdk_name or os.environ.get("VIGIL_AGENT_SHIM") or "vigil-sdk-python"
        self.sdk_version = sdk_version or "0.1"
        self._ids = itertools.count(1)
        self._sock = None
        path = path or os.environ.get("VIGIL_SDK_SOCKET")
        if path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(path)

    @property
    def connected(self):
        return self._sock is not None

    def send(self, event, **fields):
        """Send one event; `fields` are tool, tool_call_id, name, status, reason, data."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; accepted: {', '.join(EVENTS)}")
        if self._sock is None:
            return
        record = {
            "event": event,
            "sdk_name": self.sdk_name,
            "sdk_version": self.sdk_version,
            # When it happened: vigil reads the line a moment later and uses this time (if
            # plausible) to place the tool call against the kernel's events.
            "client_ts_ns": time.time_ns(),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        self.send_raw(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def send_raw(self, data):
        """Send bytes as they are (tests use it to send malformed lines)."""
        if self._sock is not None:
            self._sock.sendall(data)

    @contextlib.contextmanager
    def tool_call(self, tool, data=None):
        call_id = f"call-{os.getpid()}-{next(self._ids)}"
        self.send("tool_call_started", tool=tool, tool_call_id=call_id, data=data)
        status = "error"
        try:
            yield call_id
            status = "ok"
        finally:
            self.send("tool_call_completed", tool=tool, tool_call_id=call_id, status=status)

    def checkpoint(self, name, data=None):
        self.send("checkpoint", name=name, data=data)

    def run_finished(self):
        self.send("run_finished")

    def run_failed(self, reason):
        self.send("run_failed", reason=reason)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


if __name__ == "__main__":
    # A tiny demo: `vigil run -- python3 examples/python/vigil_sdk.py`
    import subprocess

    v = Vigil(sdk_name="vigil-sdk-demo")
    with v.tool_call("shell", data={"cmd": "uname -a"}):
        subprocess.run(["uname", "-a"], check=True)
    v.checkpoint("demo-done")
    v.run_finished()
    v.close()
