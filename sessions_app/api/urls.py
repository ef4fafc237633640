from django.urls import re_path

from ..models import SessionData
from . import views

Key = SessionData.Key
SPACE = r"^spaces/(?P<space_id>[^/]+)"
SESSION = SPACE + r"/sessions/(?P<session_id>[^/]+)"

urlpatterns = [
    re_path(SPACE + r"/sessions/?$", views.SessionTreeView.as_view(), name="session-tree"),
    re_path(SPACE + r"/integrate/?$", views.IntegrateView.as_view(), name="space-integrate"),
    re_path(SESSION + r"/?$", views.SessionDetailView.as_view(), name="session-detail"),
    re_path(SESSION + r"/messages/?$", views.SessionMessagesView.as_view(),
            name="session-messages"),
    re_path(SESSION + r"/turn/?$", views.TurnView.as_view(), name="session-turn"),
    re_path(SESSION + r"/fork/?$", views.ForkView.as_view(), name="session-fork"),
    re_path(SESSION + r"/archive/?$", views.ArchiveView.as_view(), name="session-archive"),
    re_path(SESSION + r"/consolidate/?$", views.ConsolidateView.as_view(),
            name="session-consolidate"),
    re_path(SESSION + r"/system-prompt/?$", views.slot_view(Key.SYSTEM_PROMPT, writable=True)),
    re_path(SESSION + r"/consolidate-prompt/?$",
            views.slot_view(Key.CONSOLIDATE_PROMPT, writable=True)),
    re_path(SESSION + r"/integrate-prompt/?$",
            views.slot_view(Key.INTEGRATE_PROMPT, writable=True)),
    re_path(SESSION + r"/memory/?$", views.slot_view(Key.MEMORY, writable=False)),
    re_path(SESSION + r"/insight/?$", views.slot_view(Key.INSIGHT, writable=False)),
]
