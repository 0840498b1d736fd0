from django.db import migrations, models
import django.db.models.deletion

# The captured content table, partitioned by day (capture/partitions.py makes the days). No
# foreign key to the org: an org's deletion takes its capture keys (CaptureKeys cascades), so its
# content cannot be opened from then on, and the rows go with their days (purge_expired).
CREATE_CONTENT = """
CREATE TABLE capture_capturedcontent (
    request_id varchar(64) NOT NULL,
    org_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    sealed bytea NOT NULL,
    prompt_bytes integer NOT NULL,
    answer_bytes integer NOT NULL,
    prompt_cut boolean NOT NULL,
    answer_cut boolean NOT NULL,
    redactions integer NOT NULL,
    PRIMARY KEY (request_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX capture_content_org_time ON capture_capturedcontent (org_id, occurred_at);
"""


class Migration(migrations.Migration):
    initial = True

    dependencies = [("orgs", "0006_capture")]

    operations = [
        migrations.CreateModel(
            name="CaptureKeys",
            fields=[
                (
                    "org",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="orgs.organization",
                    ),
                ),
                ("public_key", models.BinaryField()),
                ("wrapped_private_key", models.BinaryField()),
                ("wrapped_data_key", models.BinaryField()),
                ("kek_version", models.PositiveIntegerField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name="CapturedContent",
            fields=[
                ("request_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("occurred_at", models.DateTimeField()),
                ("sealed", models.BinaryField()),
                ("prompt_bytes", models.PositiveIntegerField()),
                ("answer_bytes", models.PositiveIntegerField()),
                ("prompt_cut", models.BooleanField()),
                ("answer_cut", models.BooleanField()),
                ("redactions", models.PositiveIntegerField()),
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
            options={"db_table": "capture_capturedcontent", "managed": False},
        ),
        migrations.RunSQL(CREATE_CONTENT, "DROP TABLE capture_capturedcontent"),
    ]
