"""`manage.py revokeapikey PREFIX`: revoke a key by its public prefix (see `listapikeys`)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from spaces.apikeys import apikey_revoke
from spaces.models import ApiKey


class Command(BaseCommand):
    help = (
        "Revoke the API key with this prefix. This server process rejects it at once; other "
        "running processes within STELLO_AUTH_CACHE_SECONDS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options) -> None:
        try:
            was_revoked = ApiKey.objects.get(prefix=prefix).revoked
            apikey = apikey_revoke(prefix=prefix)
        except ApiKey.DoesNotExist:
            raise CommandError(f"No API key with prefix {prefix!r}") from None
        owner = apikey.user.get_username()
        if was_revoked:
            self.stdout.write(f"API key {apikey.prefix} of {owner} was already revoked.")
        else:
            self.stdout.write(f"Revoked API key {apikey.prefix} of {owner}.")
