"""Re-wrap every provider credential's data key under the newest key-ring version.

Sealed secrets are not touched: only the small wrapped data keys change. Each row moves with
a compare-and-set on its version, so the command can be interrupted and run again.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from keys.crypto import DecryptionError, KeyRingError
from keys.key_ring import key_ring
from keys.models import ProviderCredential
from keys.services import rewrap_credential


class Command(BaseCommand):
    help = "Re-wrap every credential's data key under the newest GATEHOUSE_KEK_<version>; resumable."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, batch_size: int, **options):
        try:
            ring = key_ring()
        except KeyRingError as error:
            raise CommandError(str(error)) from None
        target = ring.current_version
        moved = skipped = 0
        while True:
            batch = list(
                ProviderCredential.objects.exclude(kek_version=target)
                .order_by("pk")
                .values_list("pk", "kek_version")[:batch_size]
            )
            if not batch:
                break
            progress = 0
            for credential_id, version in batch:
                try:
                    if rewrap_credential(credential_id, from_version=version):
                        moved += 1
                        progress += 1
                    else:
                        skipped += 1
                except DecryptionError as error:
                    raise CommandError(f"Credential {credential_id}: {error}") from None
            if progress == 0:
                break  # everything left moved concurrently; the final count below says
        self.stdout.write(f"Re-wrapped {moved} credential(s) under key-ring version {target}; {skipped} already moved.")
        remaining = ProviderCredential.objects.values("kek_version").annotate(n=Count("pk")).order_by("kek_version")
        for row in remaining:
            self.stdout.write(f"  version {row['kek_version']}: {row['n']} credential(s)")
        unused = sorted(v for v in ring.keys if v != target and not any(r["kek_version"] == v for r in remaining))
        if unused:
            versions = ", ".join(f"GATEHOUSE_KEK_{v}" for v in unused)
            self.stdout.write(self.style.SUCCESS(f"No row uses {versions} any more: it can be removed from the ring."))
        still = [r["kek_version"] for r in remaining if r["kek_version"] != target]
        if still:
            raise CommandError(f"Rows remain under version(s) {still}; run the command again.")
