"""``AsyncPolicyClient.create_session`` is awaitable AND an async context manager: ``async with
client.create_session(...)`` works directly, and ``await`` / ``async with await`` still do."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from metarl_client import AsyncPolicyClient, PolicyNotFound, SessionNotFound

POLICY = "cartpole-family"
OBS = np.array([0.01, -0.02, 0.03, 0.04], np.float32)


def test_async_with_create_session_directly_deletes_on_exit(server_target: str) -> None:
    async def main() -> None:
        async with AsyncPolicyClient(server_target) as client:
            async with client.create_session(POLICY, seed=3) as session:
                assert session.policy == POLICY
                assert (await session.info()).id == session.id
                action = await session.act(OBS, deterministic=True)
                assert action in (0, 1)
            with pytest.raises(SessionNotFound):  # deleted when the block ended
                await client.get_session(session.id)

    asyncio.run(main())


def test_await_create_session_still_returns_the_session(server_target: str) -> None:
    async def main() -> None:
        async with AsyncPolicyClient(server_target) as client:
            session = await client.create_session(POLICY, seed=3)
            assert (await client.get_session(session.id)).id == session.id  # not deleted
            async with await client.create_session(POLICY) as other:
                assert other.id != session.id
            with pytest.raises(SessionNotFound):
                await client.get_session(other.id)
            # gather and wait_for take it like any awaitable
            many = await asyncio.gather(*(client.create_session(POLICY) for _ in range(3)))
            assert len({s.id for s in many}) == 3
            await asyncio.wait_for(client.create_session(POLICY), timeout=10)
            await session.close()

    asyncio.run(main())


def test_async_with_create_session_error_and_exception_inside(server_target: str) -> None:
    async def main() -> None:
        async with AsyncPolicyClient(server_target) as client:
            with pytest.raises(PolicyNotFound, match="nope"):
                async with client.create_session("nope"):
                    raise AssertionError("not reached")
            ids = []
            with pytest.raises(RuntimeError, match="inside"):
                async with client.create_session(POLICY) as session:
                    ids.append(session.id)
                    raise RuntimeError("inside")
            with pytest.raises(SessionNotFound):  # deleted despite the exception
                await client.get_session(ids[0])

    asyncio.run(main())
