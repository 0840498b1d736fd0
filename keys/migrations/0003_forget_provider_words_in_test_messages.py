"""Connection tests used to record the provider's own error text, which can echo the key back in
another spelling. Keep only the status of those results; the audit trail is append-only and
keeps what it recorded."""

import re

from django.db import migrations

PROVIDER_WORDS = re.compile(r"^The provider answered (\d{3}):")


def forget_provider_words(apps, schema_editor):
    ProviderCredential = apps.get_model("keys", "ProviderCredential")
    rows = ProviderCredential.objects.filter(last_test_message__startswith="The provider answered ")
    for credential in rows.only("pk", "last_test_message"):
        match = PROVIDER_WORDS.match(credential.last_test_message)
        if match:
            message = f"Failed with status {match.group(1)} (tested before answers were classified; test again)."
            ProviderCredential.objects.filter(pk=credential.pk).update(last_test_message=message)


class Migration(migrations.Migration):
    dependencies = [("keys", "0002_alter_callerkey_team")]

    operations = [migrations.RunPython(forget_provider_words, migrations.RunPython.noop)]
