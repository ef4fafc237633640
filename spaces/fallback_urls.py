"""Unknown paths under /spaces: authenticate first (401 without a valid key), then a JSON 404."""

from django.urls import re_path
from rest_framework.exceptions import NotFound

from .viewsets import AsyncViewSet


class UnknownSpacesRoute(AsyncViewSet):
    schema = None  # not an operation: left out of the OpenAPI schema

    async def ainitial(self, request, *args, **kwargs) -> None:
        await super().ainitial(request, *args, **kwargs)
        raise NotFound("Not Found")

    async def not_found(self, request, *args, **kwargs) -> None:  # never reached: see ainitial
        raise NotFound("Not Found")


unknown_route = UnknownSpacesRoute.as_view(
    {method: "not_found" for method in UnknownSpacesRoute.http_method_names})

urlpatterns = [re_path(r"^spaces(/.*)?$", unknown_route)]
