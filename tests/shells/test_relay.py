"""Relay against real node servers: a step passed node to node along a 3-node
chain gives exactly what the star gives, and every failure is pinned on the
node it concerns (ChainStepFailed.index), whichever node of the chain it is."""

from __future__ import annotations

import socket

import grpc
import pytest
import torch

from splitgpt.core.node_contract import CacheMiss, ChainStepFailed, NodeFailed, SequenceStep, StepBatch
from splitgpt.rpc import node_pb2
from splitgpt.shells.node_client import GrpcNodeClient, step_request
from splitgpt.shells.node_service import NodeSettings, start
from splitgpt.shells.relay_client import RelayClient
from splitgpt.shells.step_stream import StepTable

PROMPTS = [[15496, 11, 616, 3290], [464, 2068, 7586]]


def settings(checkpoint, partition: int) -> NodeSettings:
    return NodeSettings(model_id=str(checkpoint), node_id=f"n{partition}", partition=partition, num_partitions=3, port=0)


@pytest.fixture
async def chain(tiny_checkpoint):
    """Three servers (a 3-way split) and a coordinator's clients of them, relay on and off."""
    servers = [await start(settings(tiny_checkpoint, p)) for p in range(3)]
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    relayed = [GrpcNodeClient(a, timeout_s=10, table=StepTable("test-coordinator")) for a in addresses]
    table = relayed[0].steps.table
    for c in relayed:  # one table for the coordinator's streams, as in cluster_view
        c.steps.table = table
    starred = [GrpcNodeClient(a, timeout_s=10) for a in addresses]
    yield servers, relayed, starred
    for c in relayed + starred:
        await c.close()
    for s in servers:
        await s.stop(0)


def prefill(sessions: list[str]) -> StepBatch:
    return StepBatch([SequenceStep(sid, 0, len(p)) for sid, p in zip(sessions, PROMPTS, strict=True)], torch.empty(0))


async def star_step(clients, batch: StepBatch):
    for client in clients[:-1]:
        batch = StepBatch(batch.sequences, (await client.step(batch)).hidden)
    return await clients[-1].step(batch)


async def test_a_relayed_step_gives_what_the_star_gives(chain):
    _, relayed, starred = chain
    hidden = torch.cat(await starred[-1].embed([(p, 0) for p in PROMPTS]))
    steps = prefill(["r1", "r2"]).sequences
    star = await star_step(starred, StepBatch([SequenceStep("s" + s.session_id, 0, s.length) for s in steps], hidden))
    relay = await RelayClient().step(relayed, StepBatch(steps, hidden))
    assert relay.token_ids == star.token_ids
    torch.testing.assert_close(relay.next_input, star.next_input, rtol=0, atol=0)
    assert relay.logprobs == star.logprobs
    assert len(relay.partition_ms) == 3 and all(ms > 0 for ms in relay.partition_ms)

    # Decode goes on from the caches the relayed prefill left on every node.
    positions = [len(p) for p in PROMPTS]
    relay2 = await RelayClient().step(
        relayed,
        StepBatch([SequenceStep(s.session_id, pos, 1) for s, pos in zip(steps, positions, strict=True)], relay.next_input),
    )
    star2 = await star_step(
        starred,
        StepBatch([SequenceStep("s" + s.session_id, pos, 1) for s, pos in zip(steps, positions, strict=True)], star.next_input),
    )
    assert relay2.token_ids == star2.token_ids


async def test_a_cache_miss_in_the_middle_is_pinned_on_the_middle_node(chain):
    _, relayed, _ = chain
    hidden = torch.cat(await relayed[-1].embed([(PROMPTS[0], 0)]))
    first = await RelayClient().step(relayed, StepBatch([SequenceStep("m", 0, len(PROMPTS[0]))], hidden))
    await relayed[1].release(["m"])  # only the middle node loses the session
    with pytest.raises(ChainStepFailed) as failed:
        await RelayClient().step(relayed, StepBatch([SequenceStep("m", len(PROMPTS[0]), 1)], first.next_input))
    assert failed.value.index == 1 and isinstance(failed.value.cause, CacheMiss)


async def test_a_dead_next_hop_is_named_by_the_node_that_relays_to_it(chain):
    servers, relayed, _ = chain
    hidden = torch.cat(await relayed[-1].embed([(PROMPTS[0], 0)]))
    await RelayClient().step(relayed, StepBatch([SequenceStep("d", 0, len(PROMPTS[0]))], hidden))
    await servers[2].stop(0)  # the last node goes: the middle one cannot relay to it
    with pytest.raises(ChainStepFailed) as failed:
        await RelayClient().step(relayed, StepBatch([SequenceStep("d2", 0, len(PROMPTS[0]))], hidden))
    assert failed.value.index == 2 and isinstance(failed.value.cause, NodeFailed)


async def test_a_next_hop_only_its_peer_cannot_reach_is_reported_by_the_peer(chain):
    """The node is told a next hop that does not answer (as a network policy
    between nodes would make it): its answer names that hop as unreachable, and
    the coordinator's side takes it as reported by a peer, not as seen by itself."""
    _, relayed, _ = chain
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    hidden = torch.cat(await relayed[-1].embed([(PROMPTS[0], 0)]))
    request = step_request(StepBatch([SequenceStep("p", 0, len(PROMPTS[0]))], hidden))
    request.reply_to = relayed[0].steps.table.listener_id
    request.forward.append(node_pb2.Hop(address=nowhere))
    response, heard_from = await relayed[0].steps.send(request, (relayed[0].address, nowhere))
    assert response.unreachable_address == nowhere and response.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert heard_from == relayed[0].address  # the node that could not relay says so itself

    fake = GrpcNodeClient(nowhere, timeout_s=10, table=relayed[0].steps.table)
    fake.steps.ready = relayed[0].steps.ready  # as if the coordinator reached it: only the peer cannot
    with pytest.raises(ChainStepFailed) as failed:
        await RelayClient().step([relayed[0], fake], StepBatch([SequenceStep("p2", 0, len(PROMPTS[0]))], hidden))
    assert failed.value.index == 1 and failed.value.by_peer
    await fake.close()


async def test_a_dead_middle_node_fails_the_step_at_once_not_at_its_deadline(chain):
    servers, relayed, _ = chain
    for c in relayed:
        c.steps.timeout_s = 60  # a failure that waited for the deadline would time the test out
    hidden = torch.cat(await relayed[-1].embed([(PROMPTS[0], 0)]))
    await RelayClient().step(relayed, StepBatch([SequenceStep("k", 0, len(PROMPTS[0]))], hidden))
    await servers[1].stop(0)
    with pytest.raises(ChainStepFailed) as failed:
        await RelayClient().step(relayed, StepBatch([SequenceStep("k2", 0, len(PROMPTS[0]))], hidden))
    assert failed.value.index == 1 and isinstance(failed.value.cause, NodeFailed)
