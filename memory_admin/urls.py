from django.urls import path

from memory_admin import views

urlpatterns = [
    path("", views.overview, name="overview"),
]
