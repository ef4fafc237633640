"""Routes of search, export/import and retention. Included before the space routes, so that
`POST /spaces/import` is not taken for a space whose id is "import"."""

from spaces.viewsets import ID_SEGMENT, OptionalSlashRouter

from .data import SpaceDataViewSet, SpaceImportViewSet

router = OptionalSlashRouter()
router.register("spaces", SpaceImportViewSet, basename="space-import")
router.register(f"spaces/(?P<space_id>{ID_SEGMENT})", SpaceDataViewSet, basename="space-data")

urlpatterns = router.urls
