from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.static import serve

from memory_admin.api import api
from memory_admin.views.metrics import metrics

urlpatterns = [
    # Browsers ask for /favicon.ico on every page, whatever the page's <link rel="icon"> says.
    path("favicon.ico", serve, {"path": "favicon.ico", "document_root": settings.BASE_DIR / "static"}),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("metrics", metrics, name="metrics"),
    path("", include("memory_admin.urls")),
]
