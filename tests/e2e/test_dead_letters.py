"""A malformed message on any service's queue is dead-lettered with the reason; the services
keep running."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from shared.messages import ExperimentStart
from shared.topology import DEAD_LETTER_QUEUE, EVENTS_EXCHANGE
from tests.e2e.conftest import Stack, publish, wait_finished

pytestmark = pytest.mark.e2e

# One routing key for each service's queue, with a body that is wrong in a different way.
MALFORMED = {
    "suggest.request": b'{"experiment_id": "x1", "parameter_ids": []}',  # tuner: empty id list
    "experiment.start": b"not json at all",  # dispatcher
    "trial.submit": b'{"experiment_id": "x1", "trial_id": "../etc", "sequence_id": 0, "parameters": {}}',
    "trial.status": b'{"experiment_id": "x1", "trial_id": "t", "parameter_id": 0, "status": "EXPLODED"}',
    # The submitter's AML watch and kill queues (a kill also reaches each replica's own queue).
    "ticket.aml.watch": b'{"experiment_id": "x1", "purpose": "aml.watch", "trial_id": "t", "due": "soon"}',
    "trial.kill": b'{"experiment_id": "x1", "trial_id": "t", "status": "VAPORISED", "reason": "r"}',
}


async def test_malformed_messages_are_dead_lettered_and_services_keep_running(stack: Stack) -> None:
    connection = await aio_pika.connect(stack.env["TUNEBUS_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        for key, body in MALFORMED.items():
            await exchange.publish(aio_pika.Message(body, message_id=key), routing_key=key)
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        reasons: dict[str, str] = {}
        for _ in range(100):
            message = await queue.get(fail=False)
            if message is None:
                if len(reasons) == len(MALFORMED):
                    break
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            reasons[message.routing_key or ""] = str((message.headers or {}).get("x-tunebus-reason"))
    assert set(reasons) == set(MALFORMED), reasons
    assert "parameter_ids" in reasons["suggest.request"]
    assert "not JSON" in reasons["experiment.start"]
    assert "trial_id" in reasons["trial.submit"]
    assert "status" in reasons["trial.status"]
    assert "due" in reasons["ticket.aml.watch"]
    assert "status" in reasons["trial.kill"]
    for procs in stack.procs.values():
        assert all(p.poll() is None for p in procs)

    experiment_id = f"after{uuid.uuid4().hex[:8]}"
    config = {
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialCommand": 'python3 -c "import nni; nni.report_final_result(nni.get_next_parameter()[\'x\'])"',
        "trialConcurrency": 2, "maxTrialNumber": 2,
        "tuner": {"name": "Random"}, "trainingService": {"platform": "local"},
    }
    await publish(stack, ExperimentStart(experiment_id=experiment_id, config=config))
    assert (await wait_finished(stack, experiment_id)).status == "DONE"
