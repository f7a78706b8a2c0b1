"""AlertsNotifier: Sluice's alerts (sluice.alerts) sent through Airflow's notifier mechanism (BaseNotifier) to the
webhook of connection etl_alerts.

record_run calls it once every lane has finished, with the run's findings, so a run sends one message naming every
failed source, refused delete, held batch and stale source. Imported only by the running task (it imports Airflow).
"""

from airflow.sdk import BaseNotifier

from sluice import airflow_edge


class AlertsNotifier(BaseNotifier):
    """found: the run's sluice.alerts.Alert list (nothing is sent when it is empty); timeout: seconds the webhook
    may take. A webhook that fails never fails the caller (airflow_edge.notify logs it)."""

    def __init__(self, found: list, *, timeout: float):
        super().__init__()
        self.found = found
        self.timeout = timeout

    def notify(self, context) -> None:
        airflow_edge.notify(self.found, dag_id=context["dag"].dag_id, run_id=context["run_id"], timeout=self.timeout)
