"""Running a Lua script registered with redis-py, the cheap way.

redis-py's script object tests `isinstance(client, Pipeline)` on every call, and `Pipeline` is
a typing Protocol's subclass: that test cost 13 µs, about a twentieth of an uncached answer
(docs/PERFORMANCE.md, the profile). These do the same work without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service.state.lane import Lane


async def run_script(
    script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], lane: Lane | None = None
) -> Any:
    """`script(keys=keys, args=args)` on the client it was registered with, or on `lane`. A
    Redis that does not know it (restarted, flushed) gets it loaded, as redis-py would."""
    try:
        if lane is not None:
            return await lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
        return await script.registered_client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        if lane is not None:  # loaded on the lane too: with its timeout, not redis-py's
            await lane.call("SCRIPT", "LOAD", script.script)
            return await lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
        return await script(keys=keys, args=args)


async def run_script_many(
    script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]], lane: Lane
) -> list[Any]:
    """`run_script` for many (keys, args) in one burst on `lane`: the replies in order. Where
    Redis lost the script, it is loaded and the refused calls made again; any other refusal
    is raised."""
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
    replies = await lane.call_many(commands)
    refused = [at for at, reply in enumerate(replies) if isinstance(reply, Exception)]
    if not refused:
        return replies
    if not all(isinstance(replies[at], NoScriptError) for at in refused):
        raise next(replies[at] for at in refused if not isinstance(replies[at], NoScriptError))
    await lane.call("SCRIPT", "LOAD", script.script)  # with the lane's timeout
    again = await lane.call_many([commands[at] for at in refused])
    for at, reply in zip(refused, again, strict=True):
        if isinstance(reply, Exception):
            raise reply
        replies[at] = reply
    return replies


def queue_script(
    pipe: Pipeline, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> None:
    """`script` queued in a pipeline, which loads its scripts before it runs them."""
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)
