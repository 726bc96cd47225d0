"""Written by vigil into a per-run directory on PYTHONPATH when `vigil run --agent-shim` names an
agent SDK. When the run imports that SDK, its tool calls are reported on VIGIL_SDK_SOCKET
(through vigil_sdk.py, written beside this file): nothing in the agent's code changes.

- openai-agents: a tracing processor (`agents.add_trace_processor`) turns every function-tool
  span into tool_call_started / tool_call_completed, and each trace into checkpoints.
- gemini-google-genai: automatic function calling invokes tools through
  `google.genai._extra_utils.invoke_function_from_dict_args` (and its async twin); both are
  wrapped, so each invocation is a tool call.

Another sitecustomize further down sys.path still runs: it is imported after this one.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_TARGETS = {
    "openai-agents": "agents",
    "gemini-google-genai": "google.genai._extra_utils",
}


def _client(version):
    from vigil_sdk import Vigil

    return Vigil(sdk_name=os.environ.get("VIGIL_AGENT_SHIM"), sdk_version=version)


def _hook_openai_agents(module):
    vigil = _client(getattr(module, "__version__", None))

    class VigilProcessor(module.TracingProcessor):
        def on_trace_start(self, trace):
            vigil.checkpoint(f"trace_started:{trace.name}")

        def on_trace_end(self, trace):
            vigil.checkpoint(f"trace_finished:{trace.name}")

        def on_span_start(self, span):
            data = span.span_data
            if getattr(data, "type", None) == "function":
                vigil.send("tool_call_started", tool=data.name, tool_call_id=span.span_id)

        def on_span_end(self, span):
            data = span.span_data
            if getattr(data, "type", None) == "function":
                vigil.send(
                    "tool_call_completed",
                    tool=data.name,
                    tool_call_id=span.span_id,
                    status="error" if span.error else "ok",
                )

        def shutdown(self):
            vigil.close()

        def force_flush(self):
            pass

    module.add_trace_processor(VigilProcessor())


def _hook_google_genai(module):
    import functools
    import itertools

    try:
        from google.genai import version

        sdk_version = version.__version__
    except Exception:
        sdk_version = None
    vigil = _client(sdk_version)
    ids = itertools.count(1)

    def report(function_to_invoke):
        tool = getattr(function_to_invoke, "__name__", "function")
        call_id = f"genai-{os.getpid()}-{next(ids)}"
        vigil.send("tool_call_started", tool=tool, tool_call_id=call_id)
        return tool, call_id

    sync = module.invoke_function_from_dict_args

    @functools.wraps(sync)
    def invoke(args, function_to_invoke):
        tool, call_id = report(function_to_invoke)
        status = "error"
        try:
            result = sync(args, function_to_invoke)
            status = "ok"
            return result
        finally:
            vigil.send("tool_call_completed", tool=tool, tool_call_id=call_id, status=status)

    module.invoke_function_from_dict_args = invoke

    asynchronous = getattr(module, "invoke_function_from_dict_args_async", None)
    if asynchronous is not None:

        @functools.wraps(asynchronous)
        async def invoke_async(args, function_to_invoke):
            tool, call_id = report(function_to_invoke)
            status = "error"
            try:
                result = await asynchronous(args, function_to_invoke)
                status = "ok"
                return result
            finally:
                vigil.send("tool_call_completed", tool=tool, tool_call_id=call_id, status=status)

        module.invoke_function_from_dict_args_async = invoke_async


_HOOKS = {"agents": _hook_openai_agents, "google.genai._extra_utils": _hook_google_genai}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when the SDK's package is found by the other finders, its loader
    is wrapped so that the hook runs right after the package has executed."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_hook(module):
            exec_module(module)
            try:
                _HOOKS[fullname](module)
            except Exception as e:  # never break the agent because of its observer
                print(f"vigil shim: {fullname} not instrumented: {e}", file=sys.stderr)

        loader.exec_module = exec_and_hook
        return spec


def _install():
    target = _TARGETS.get(os.environ.get("VIGIL_AGENT_SHIM", ""))
    if target and os.environ.get("VIGIL_SDK_SOCKET"):
        sys.meta_path.insert(0, _Finder(target))


def _chain():
    """Run the next sitecustomize on sys.path, if any."""
    rest = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
_chain()
