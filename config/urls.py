from django.contrib import admin
from django.urls import include, path

from memory_admin.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include("memory_admin.urls")),
]
