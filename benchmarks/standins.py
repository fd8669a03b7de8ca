"""The stand-ins for Slack's Web API and the model provider, in a process of their own, so
that answering the service's calls does not take the load generator's event loop (as the
real Slack and provider are elsewhere). Prints one JSON line with their URLs, then serves
until terminated.

    python -m benchmarks.standins
"""

from __future__ import annotations

import asyncio
import json

from tests.fakes.llm_server import FakeLLMServer, act
from tests.fakes.slack_api import FakeSlackAPI


async def main() -> None:
    llm = await FakeLLMServer().start()
    llm.responder = lambda body: act("done_for_now", message="ok")
    slack = await FakeSlackAPI().start()
    print(json.dumps({"llm": llm.base_url, "slack": slack.url}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await slack.stop()
        await llm.stop()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
