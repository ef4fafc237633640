"""Keep each space's session tree in step with the space, inside the space service's transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from spaces.signals import (
    space_config_check,
    space_created,
    space_deleted,
    space_rows,
    space_updated,
)

from .accounting.models import UsageQuota
from .accounting.quotas import quotas_changed
from .models import Session, SessionData, TopologyNode
from .store.postgres import root_session_statements


@receiver(space_created)
def create_root_session(sender, space, **kwargs) -> None:
    root = Session.objects.create(space=space, label=space.label, role=Session.Role.MAIN)
    TopologyNode.objects.create(session=root, space=space, depth=0, index=0, label=root.label)
    if space.system_prompt:
        SessionData.objects.create(
            session=root, key=SessionData.Key.SYSTEM_PROMPT, content=space.system_prompt
        )


@receiver(space_updated)
def sync_root_system_prompt(sender, space, changed, **kwargs) -> None:
    if "system_prompt" in changed:
        root = Session.objects.only("id").get(space=space, role=Session.Role.MAIN)
        if space.system_prompt is None:
            SessionData.objects.filter(session=root, key=SessionData.Key.SYSTEM_PROMPT).delete()
        else:
            SessionData.objects.update_or_create(
                session=root, key=SessionData.Key.SYSTEM_PROMPT,
                defaults={"content": space.system_prompt},
            )
    _evict_after_commit(str(space.id))


@receiver(space_deleted)
def forget_deleted_space(sender, space_id, **kwargs) -> None:
    _evict_after_commit(space_id)


def _evict_after_commit(space_id: str) -> None:
    from .runtime.pool import runtimes

    transaction.on_commit(lambda: runtimes.evict_everywhere(space_id))


@receiver(space_rows)
def root_session_rows(sender, space, **kwargs) -> list[tuple[str, list[Any]]]:
    """The twin of `create_root_session` for `aspace_create`'s one statement (PostgreSQL)."""
    return root_session_statements(space)


@receiver(space_config_check)
def check_space_agent_config(sender, config, **kwargs) -> None:
    from . import conf
    from .engine.agent_config import validate_config

    validate_config(config, where="config", space=True, profiles=conf.llm_profile_names(),
                    mcp_servers=conf.mcp_server_names())


# A quota saved or deleted through the ORM (the admin) applies at once in this process.
post_save.connect(quotas_changed, sender=UsageQuota, dispatch_uid="stello-quota-saved")
post_delete.connect(quotas_changed, sender=UsageQuota, dispatch_uid="stello-quota-deleted")
