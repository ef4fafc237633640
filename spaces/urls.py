from django.urls import path

from .api import SpaceViewSet

space_list = SpaceViewSet.as_view({"get": "list", "post": "create"})
space_detail = SpaceViewSet.as_view(
    {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}
)

urlpatterns = [
    path("spaces", space_list, name="space-list"),
    path("spaces/", space_list),
    path("spaces/<str:space_id>", space_detail, name="space-detail"),
    path("spaces/<str:space_id>/", space_detail),
]
