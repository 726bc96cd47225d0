"""An unmodified google-genai program with automatic function calling, against a scripted
Gemini endpoint on loopback (no network): the model asks for `run_shell` once, then answers.
vigil's --agent-shim gemini-google-genai must see the tool call."""

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from google import genai
from google.genai import types

TURNS = [
    {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "run_shell", "args": {"cmd": "uname -s"}}}]},
        "finishReason": "STOP"}]},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "done"}]},
                     "finishReason": "STOP"}]},
]


class ScriptedGemini(BaseHTTPRequestHandler):
    turn = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps(TURNS[min(ScriptedGemini.turn, 1)]).encode()
        ScriptedGemini.turn += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def run_shell(cmd: str) -> str:
    """Run a command."""
    return subprocess.run(cmd.split(), capture_output=True, text=True).stdout


server = HTTPServer(("127.0.0.1", 0), ScriptedGemini)
threading.Thread(target=server.serve_forever, daemon=True).start()
client = genai.Client(
    api_key="scripted",
    http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{server.server_port}"),
)
response = client.models.generate_content(
    model="gemini-2.0-flash",
    contents="go",
    config=types.GenerateContentConfig(tools=[run_shell]),
)
print(response.text)
server.shutdown()
