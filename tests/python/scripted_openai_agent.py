"""An unmodified OpenAI Agents SDK program with a scripted model (no network): it calls the
`run_shell` tool once, then answers. vigil's --agent-shim openai-agents must see the tool call."""

import subprocess
from agents import Agent, Runner, function_tool, Model, ModelResponse, Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText


class ScriptedModel(Model):
    """A model that calls the `run_shell` tool once, then answers."""

    def __init__(self):
        self.turn = 0

    async def get_response(self, system_instructions, input, model_settings, tools, output_schema,
                           handoffs, tracing, *, previous_response_id=None, conversation_id=None,
                           prompt=None):
        self.turn += 1
        if self.turn == 1:
            out = [ResponseFunctionToolCall(type="function_call", call_id="call-1", name="run_shell",
                                            arguments='{"cmd": "uname -s"}', id="fc-1", status="completed")]
        else:
            out = [ResponseOutputMessage(id="msg-1", type="message", role="assistant", status="completed",
                                         content=[ResponseOutputText(type="output_text", text="done", annotations=[])])]
        return ModelResponse(output=out, usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


@function_tool
def run_shell(cmd: str) -> str:
    """Run a command."""
    return subprocess.run(cmd.split(), capture_output=True, text=True).stdout


agent = Agent(name="scripted", instructions="use the tool", model=ScriptedModel(), tools=[run_shell])
print(Runner.run_sync(agent, "go").final_output)
