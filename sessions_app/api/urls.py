"""The session routes and the space's integrate route, with and without a trailing slash."""

from spaces.viewsets import ID_SEGMENT, OptionalSlashRouter

from .views import SessionViewSet, SpaceMemoryViewSet

SPACE = f"spaces/(?P<space_id>{ID_SEGMENT})"

router = OptionalSlashRouter()
router.register(f"{SPACE}/sessions", SessionViewSet, basename="session")
router.register(SPACE, SpaceMemoryViewSet, basename="space-memory")

urlpatterns = router.urls
