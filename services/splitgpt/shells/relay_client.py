"""Relay, the coordinator's side: `core.node_contract.ChainClient` over the nodes' StepStreams.

The step goes to the chain's first node with the rest of the chain; the nodes
pass the rows on (shells.relay) and the last answers on the coordinator's
stream to it. Every node of the chain has that stream open and registered as
this coordinator's listener first, so a node that fails the step can say so,
and the failure is pinned on the node it concerns: the one that answered with
an error, or the node whose stream ended. A next hop that a node could not
reach is named too, but as reported by its peer (`by_peer`): the fault may be
the link between two nodes, which the coordinator cannot see from where it is.
"""

from __future__ import annotations

from ..core.node_contract import ChainStepFailed, NodeFailed, StepBatch, StepResult
from ..rpc import node_pb2
from .error_mapping import code_from_number, error_from_status
from .node_client import GrpcNodeClient, result_from_reply, step_request
from .step_stream import LinkDown


class RelayClient:
    async def step(self, chain: list[GrpcNodeClient], batch: StepBatch) -> StepResult:
        first = chain[0]
        index = {client.address: i for i, client in enumerate(chain)}
        request = step_request(batch)
        request.reply_to = first.steps.table.listener_id
        request.forward.extend(node_pb2.Hop(address=client.address) for client in chain[1:])
        try:
            for client in chain[1:]:  # each may answer: it must know whom to tell
                await client.steps.ready()
            response, address = await first.steps.send(request, tuple(index))
        except LinkDown as exc:
            raise ChainStepFailed(index.get(exc.address), exc, by_peer=exc.by_peer) from None
        except NodeFailed as exc:  # a deadline: nothing says where the step stopped
            raise ChainStepFailed(None, exc) from None
        if response.error_code:
            code = code_from_number(response.error_code)
            if response.unreachable_address:
                where = response.unreachable_address
                cause = NodeFailed(f"{where}: {code.name}: {response.error_detail}")
                raise ChainStepFailed(index.get(where), cause, by_peer=True)
            raise ChainStepFailed(index.get(address), error_from_status(code, response.error_detail, address))
        return result_from_reply(response)
