"""The Space routes, each answering with and without a trailing slash."""

from .api import SpaceViewSet
from .viewsets import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("spaces", SpaceViewSet, basename="space")

urlpatterns = router.urls
