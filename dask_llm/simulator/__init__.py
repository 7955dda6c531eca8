"""An OpenAI-compatible HTTP simulator for tests, demos and benchmarks.

It answers chat completions deterministically (see :func:`expected_answer`),
counts tokens with its own tokenizer, and simulates latency, provider rate
limits (with the retry hints of OpenAI, plain HTTP servers or LiteLLM, see
:data:`RATE_LIMIT_STYLES`), faults (server errors, spurious 429s, hangs, and
200s whose body is truncated, HTML, empty, ``{}``, drip-fed or huge), API keys
and model lists. It also serves OpenAI's Batch API (``/v1/files``,
``/v1/batches``, and Azure's ``/openai/...``), whose lines get the same answers
on the server's clock. Run it in-process (:class:`Simulator`), in a child
process (:meth:`Simulator.subprocess`), or from the command line with
``python -m dask_llm.simulator``.

Examples
--------
>>> import openai
>>> from dask_llm.simulator import Simulator, SimulatorConfig, expected_answer
>>> messages = [{"role": "user", "content": "Which service stores blobs?"}]
>>> with Simulator(SimulatorConfig(rpm=600)) as sim:
...     client = openai.OpenAI(base_url=sim.url, api_key="k")
...     reply = client.chat.completions.create(model="m", messages=messages)
>>> reply.choices[0].message.content == expected_answer(messages)
True
"""

from ._answers import count_tokens, expected_answer, prompt_tokens
from ._config import DEFAULT_LABELS, RATE_LIMIT_STYLES, SimulatorConfig
from ._handles import Simulator, SimulatorProcess
from ._ratelimit import format_duration

__all__ = [
    "DEFAULT_LABELS",
    "RATE_LIMIT_STYLES",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProcess",
    "count_tokens",
    "expected_answer",
    "format_duration",
    "prompt_tokens",
]
