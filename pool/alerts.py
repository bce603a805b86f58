"""Alerts: Prefect automations that send a message to a webhook when a flow run of the pool
fails or crashes, and when the retraining promotes a model.

The webhook's URL is a secret: it lives only in a Custom Webhook notification block's secrets
(the block's URL field is the placeholder ``{{webhook_url}}``), which the API returns obfuscated;
it is never written to the stack's state, a log, an artifact or git. Repeated failures of one
deployment within ``window_s`` are one message: a reactive trigger with a threshold of one fires
at the first and then waits out its window (Prefect's bucketing), per deployment.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import timedelta

from rnn.names import PROMOTED_EVENT

BLOCK = "rnn-pool-alerts"  # the notification block document's name
FAILURES, PROMOTIONS = "rnn-alert-failed-runs", "rnn-alert-promotions"  # the automations
WINDOW_S = 600  # failures of one deployment within this many seconds: one message
URL_ENV = "RNN_NOTIFY_URL"  # where `python -m pool notify` reads the webhook's URL

FAILURE_SUBJECT = "rnn pool: {{ flow_run.name }} {{ flow_run.state.name | lower }}"
FAILURE_BODY = (
    "Flow run {{ flow_run.name }} of {{ flow.name }}{{ '/' ~ deployment.name if deployment else '' }}"
    " ended {{ flow_run.state.name }}: {{ (flow_run.state.message or 'no message') | truncate(300) }}"
    " - {{ flow_run | ui_url }}"
)
PROMOTION_SUBJECT = "rnn pool: {{ event.resource['prefect.resource.name'] }} promoted"
PROMOTION_BODY = (
    "{{ event.resource['prefect.resource.name'] }} {{ event.payload.version }} is now prod: "
    "held-out perplexity {{ event.payload.perplexity }} against "
    "{{ event.payload.previous_perplexity if event.payload.previous_perplexity is not none "
    "else 'none' }} for {{ event.payload.previous_version or 'no earlier version' }}"
)


def install(webhook_url: str, window_s: int = WINDOW_S) -> None:
    """The notification block and the two automations, replacing earlier ones (run against the
    API the current Prefect settings name)."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    block = CustomWebhookNotificationBlock(
        name="rnn pool",
        url="{{webhook_url}}",
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        secrets={"webhook_url": webhook_url},
    )
    block_id = block.save(BLOCK, overwrite=True)
    for name in (FAILURES, PROMOTIONS):
        with suppress(ValueError):
            Automation.read(name=name).delete()
    Automation(
        name=FAILURES,
        description=f"A message when a flow run fails or crashes; one per deployment per {window_s} s",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"related:deployment:prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(seconds=window_s),
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=FAILURE_SUBJECT, body=FAILURE_BODY)
        ],
    ).create()
    Automation(
        name=PROMOTIONS,
        description="A message when the retraining promotes a model",
        trigger=EventTrigger(
            expect={PROMOTED_EVENT},
            match=ResourceSpecification({"prefect.resource.id": ["rnn.model.*"]}),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(seconds=0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id, subject=PROMOTION_SUBJECT, body=PROMOTION_BODY
            )
        ],
    ).create()
