import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

# The retention purge is the one way an event may leave the table: inside the purge's own
# transaction `SET LOCAL gatehouse.audit_purge = 'on'` lets DELETE through. UPDATE and TRUNCATE
# stay refused always, and the setting dies with the transaction.
PURGEABLE_SQL = """
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_auditevent'
            AND current_setting('gatehouse.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_checkpoint_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
"""

APPEND_ONLY_SQL = """
DROP TRIGGER IF EXISTS audit_checkpoint_no_update_or_delete ON audit_auditcheckpoint;
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial"), ("orgs", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("uuid", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("sequence", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "kind",
                    models.CharField(choices=[("periodic", "Periodic"), ("purge", "Purge")], max_length=16),
                ),
                ("purged_through_sequence", models.BigIntegerField(blank=True, null=True)),
                ("purged_count", models.BigIntegerField(default=0)),
                ("signature", models.CharField(max_length=128)),
                (
                    "org",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="orgs.organization",
                    ),
                ),
            ],
            options={"ordering": ["-sequence", "-created_at"]},
        ),
        migrations.AddIndex(
            model_name="auditcheckpoint",
            index=models.Index(fields=["org", "-sequence"], name="audit_checkpoint_org_newest"),
        ),
        migrations.RunSQL(PURGEABLE_SQL, APPEND_ONLY_SQL),
    ]
