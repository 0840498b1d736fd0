from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Usage and budgets"

    def ready(self) -> None:
        # The pipeline's gauges on the portal's /metrics (controlplane/metrics.py).
        from controlplane.metrics import pipeline_registry

        from .pipeline_metrics import PipelineCollector

        pipeline_registry.register(PipelineCollector())
