"""A toy agent run: it reports its tool calls to vigil through the SDK socket (see
examples/python/vigil_sdk.py), and vigil correlates each call with what the kernel saw."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from vigil_sdk import Vigil  # noqa: E402

vigil = Vigil(sdk_name="example-agent", sdk_version="0.1")
with vigil.tool_call("shell", data={"cmd": "python3 -m pytest -q tests"}):
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], check=True
    )
vigil.checkpoint("tests-green")
with vigil.tool_call("read_file", data={"path": "app/calc.py"}):
    with open("app/calc.py") as f:
        print(f"app/calc.py: {len(f.read().splitlines())} lines")
vigil.run_finished()
