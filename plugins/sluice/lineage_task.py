"""@lane_task: the TaskFlow decorator of a source's lane steps, @task whose operator reports to OpenLineage the
datasets its step read and wrote (sluice.lineage).

Why operator methods (get_openlineage_facets_on_complete/_on_failure, the provider's DefaultExtractor), not hook
lineage or inlets/outlets: a lane step is one mapped instance per source, known only at run time, and only the
running step knows its source's URL, the warehouse it reached and the rows it wrote. Static inlets/outlets are the
same for every instance (wrong per lane) and carry no row counts; the hook lineage collector gives asset
datasets without schema facets or output statistics. The provider extracts lineage after the task, in a forked
process where connections must not be looked up again, so the step hands its datasets to its own operator while
it runs (airflow_edge.report_lineage) and these methods only convert them.

A START event carries no dataset (the step has not resolved its connection yet); COMPLETE carries the step's
inputs and outputs with the rows it wrote; FAIL the datasets the step had reached, and the provider's
errorMessage facet the task's exception: the masked Failure message (airflow_edge.reports_failure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

# the DAG file imports this module: what only the running task needs is imported there, not at parse time
if TYPE_CHECKING:
    from sluice.lineage import Column, Dataset, StepLineage


class LaneStepOperator(DecoratedOperator, PythonOperator):
    """The operator of a @lane_task: TaskFlow's own (_PythonDecoratedOperator), plus the OpenLineage methods."""

    template_fields = ("templates_dict", "op_args", "op_kwargs")
    template_fields_renderers = {"templates_dict": "json", "op_args": "py", "op_kwargs": "py"}
    custom_operator_name = "@task"
    # set by the running step (airflow_edge.report_lineage), only when OpenLineage is on
    sluice_lineage: StepLineage | None = None

    def __init__(self, *, python_callable, op_args, op_kwargs, **kwargs) -> None:
        super().__init__(kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args,
                                             "op_kwargs": op_kwargs},
                         python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    def get_openlineage_facets_on_start(self):
        return operator_lineage(None)

    def get_openlineage_facets_on_complete(self, task_instance):
        return operator_lineage(self.sluice_lineage)

    def get_openlineage_facets_on_failure(self, task_instance):
        return operator_lineage(self.sluice_lineage)


def lane_task(python_callable=None, **kwargs):
    """@task for a lane step: the same arguments, a LaneStepOperator."""
    return task_decorator_factory(python_callable=python_callable, decorated_operator_class=LaneStepOperator,
                                  **kwargs)


def operator_lineage(step: StepLineage | None):
    """The provider's OperatorLineage of a step's datasets: each with its schema facet, each output with the rows
    the step wrote (outputStatistics) when it finished."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset

    if step is None:
        return OperatorLineage()
    inputs = [InputDataset(dataset.namespace, dataset.name, facets=_facets(dataset)) for dataset in step.inputs]
    outputs = [OutputDataset(dataset.namespace, dataset.name, facets=_facets(dataset), outputFacets=(
        {"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=dataset.rows)} if dataset.rows is not None else {})) for dataset in step.outputs]
    return OperatorLineage(inputs=inputs, outputs=outputs)


def _facets(dataset: Dataset) -> dict:
    from openlineage.client.facet_v2 import schema_dataset

    def field(column: Column):
        return schema_dataset.SchemaDatasetFacetFields(name=column.name, type=column.type,
                                                       fields=[field(nested) for nested in column.fields])

    if not dataset.columns:
        return {}
    return {"schema": schema_dataset.SchemaDatasetFacet(fields=[field(column) for column in dataset.columns])}
