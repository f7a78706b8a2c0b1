"""Alerts that reach a person: a run's failures, refused deletes and stale sources, as one webhook message.

Airflow-free: airflow_edge.notify finds the webhook (connection etl_alerts) and calls `send`. The message carries
`text` (what Slack-, Mattermost- or Teams-style incoming webhooks show) and `alerts`, one object per finding, for
a receiver that routes them. An error is a sluice.failures.Failure's message: already masked, never raw text.
"""

import dataclasses
from datetime import datetime
from urllib.parse import quote

import requests

from sluice.failures import Failure

# error classes that mean a read was refused because it would delete too many rows (sluice.errors.DeleteRefused)
DELETES_REFUSED = "DeleteRefused"
# an error class -> its alert's kind (any other failure: failed)
KINDS = {DELETES_REFUSED: "deletes_refused", "QualityHeld": "quality_held"}


@dataclasses.dataclass(frozen=True)
class Alert:
    kind: str  # failed | deletes_refused | quality_held | quality_warning | stale
    source: str | None
    step: str | None
    error: str | None  # masked (Failure.message), or why the source is stale

    def line(self) -> str:
        where = f"{self.source or 'the run'}, step {self.step}" if self.step else (self.source or "the run")
        return f"{self.kind.replace('_', ' ')}: {where}: {self.error}"


def of_run(failures: list[Failure], stale: list[tuple[str, datetime]], *, staleness_hours: float) -> list[Alert]:
    """One alert per failed source or step (a refused delete is its own kind), one per stale source: its last
    success older than staleness_hours."""
    found = [Alert(KINDS.get(failure.error_class, "failed"), failure.source, failure.step, failure.message)
             for failure in failures]
    found += [Alert("stale", source, None,
                    f"no successful load since {last_success.isoformat(timespec='seconds')}, "
                    f"more than {staleness_hours:g} hours (SLUICE_MAX_STALENESS_HOURS)")
              for source, last_success in stale]
    return found


def of_quality(warnings: list[tuple]) -> list[Alert]:
    """One alert per failed warn check of the run (source, check, measured, threshold, detail): its batch loaded."""
    return [Alert("quality_warning", source, "upsert",
                  f"{check} measured {'-' if measured is None else f'{measured:.6g}'} (threshold {threshold}"
                  f"{', ' + detail if detail else ''}); the batch loaded")
            for source, check, measured, threshold, detail in warnings]


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """The run in Airflow's UI ([api] base_url); a run id holds ':' and '+', so it is quoted whole."""
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def message(found: list[Alert], *, dag_id: str, run_id: str, url: str) -> dict:
    header = f"Sluice {dag_id} run {run_id}: {len(found)} alert{'s' if len(found) != 1 else ''}"
    return {"text": "\n".join([header, *(f"- {alert.line()}" for alert in found), url]),
            "dag_id": dag_id, "run_id": run_id, "run_url": url,
            "alerts": [dataclasses.asdict(alert) for alert in found]}


def send(session, url: str, body: dict, *, timeout: float) -> None:
    """POST the message; raises requests.RequestException when the receiver is down, slow (timeout: seconds to
    connect, and between bytes of its answer's head) or answers anything but 2xx. The answer's body is never
    read: a receiver that streams one forever cannot hold the run. No redirects: a webhook that moved is
    reconfigured, not followed to another host."""
    with session.post(url, json=body, timeout=timeout, allow_redirects=False, stream=True) as response:
        if not 200 <= response.status_code < 300:
            raise requests.HTTPError(f"answered {response.status_code}", response=response)
