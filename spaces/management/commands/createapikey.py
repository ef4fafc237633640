"""`manage.py createapikey USERNAME [--name NAME]`: the key is printed alone on the last line,
so `X_API_KEY=$(python manage.py createapikey alice | tail -n1)` works."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from spaces.apikeys import apikey_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user, without a password, if needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the key, e.g. 'ci'")

    def handle(self, *args, username: str, name: str, **options) -> None:
        User = get_user_model()
        with transaction.atomic():
            user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
            created = user is None
            if created:
                # create_user with password=None stores an unusable password.
                user = User._default_manager.create_user(
                    **{User.USERNAME_FIELD: username}, password=None
                )
            apikey, raw_key = apikey_create(user=user, name=name)
        if created:
            self.stdout.write(f"Created user {username} (no password: API access only).")
        label = f" ({apikey.name})" if apikey.name else ""
        self.stdout.write(
            f"Created API key {apikey.prefix}{label} for {username}. "
            "It is shown only now; store it safely:"
        )
        self.stdout.write(raw_key)
