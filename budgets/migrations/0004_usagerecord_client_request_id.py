"""The caller's X-Request-Id beside the gateway's own request id (issue 11): the column is added
with a constant default (no table rewrite), and its index is built without locking writes."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("budgets", "0003_usagerecord_attempts"),
        ("orgs", "0004_audit_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="client_request_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        AddIndexConcurrently(
            model_name="usagerecord",
            index=models.Index(
                condition=~models.Q(client_request_id=""),
                fields=["org", "client_request_id"],
                name="usage_org_client_request_id",
            ),
        ),
    ]
