from django.apps import AppConfig


class SpacesConfig(AppConfig):
    name = "spaces"
    verbose_name = "Spaces"
    default_auto_field = "django.db.models.BigAutoField"
