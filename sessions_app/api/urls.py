"""The session routes and the space's integrate route, with and without a trailing slash."""

from spaces.viewsets import ID_SEGMENT, OptionalSlashRouter

from ..accounting.api import SpaceUsageViewSet, UsageViewSet
from .core import CoreRouter, CoreViewSet
from .views import SessionViewSet, SpaceMemoryViewSet

SPACE = f"spaces/(?P<space_id>{ID_SEGMENT})"

router = OptionalSlashRouter()
router.register(f"{SPACE}/sessions", SessionViewSet, basename="session")
router.register(SPACE, SpaceMemoryViewSet, basename="space-memory")
router.register(f"{SPACE}/usage", SpaceUsageViewSet, basename="space-usage")
router.register("usage", UsageViewSet, basename="usage")

core_router = CoreRouter()
core_router.register(f"{SPACE}/core", CoreViewSet, basename="space-core")

urlpatterns = [*core_router.urls, *router.urls]
