"""`make run` helper: make sure a development user and key exist, and show how to use them."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from spaces.apikeys import apikey_authenticate, apikey_create

KEY_FILE = Path(settings.BASE_DIR) / ".stello" / "dev-api-key"


class Command(BaseCommand):
    help = "Ensure a development user with an API key (kept in .stello/dev-api-key)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="dev")

    def handle(self, *args, username: str, **options) -> None:
        key = KEY_FILE.read_text().strip() if KEY_FILE.exists() else ""
        if not key or apikey_authenticate(key) is None:
            user, _ = get_user_model().objects.get_or_create(username=username)
            key = apikey_create(user=user, name="development key (make run)")[1]
            KEY_FILE.parent.mkdir(exist_ok=True)
            KEY_FILE.write_text(key + "\n")
            KEY_FILE.chmod(0o600)
        port = os.environ.get("PORT", "8000")
        self.stdout.write(f"Development API key (in {KEY_FILE.relative_to(settings.BASE_DIR)}):")
        self.stdout.write(f"  {key}")
        self.stdout.write("Try:")
        self.stdout.write(f"  curl -s -H 'X-API-Key: {key}' http://127.0.0.1:{port}/spaces")
        self.stdout.write(
            f"  curl -s -H 'X-API-Key: {key}' -d '{{\"label\": \"demo\"}}' "
            f"http://127.0.0.1:{port}/spaces"
        )
