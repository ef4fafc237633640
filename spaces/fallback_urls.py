"""Unknown paths under /spaces: authenticate first (401 without a valid key), then a JSON 404."""

from django.urls import re_path
from rest_framework.exceptions import NotFound
from rest_framework.views import APIView


class UnknownSpacesRoute(APIView):
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        raise NotFound("Not Found")


urlpatterns = [re_path(r"^spaces(/.*)?$", UnknownSpacesRoute.as_view())]
