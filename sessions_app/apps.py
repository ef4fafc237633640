from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Space lifecycle events (root session, prompt sync, runtime eviction) live here
        # because sessions_app depends on spaces, never the reverse.
        from . import receivers  # noqa: F401
        from .runtime.locks import idempotency_key_locks

        idempotency_key_locks()  # the locks behind Idempotency-Key, which spaces cannot import
