from django.urls import re_path

from memory_admin.consumers import ConsoleConsumer

websocket_urlpatterns = [
    re_path(r"^ws/ns/(?P<ns>[A-Za-z0-9_.:@\-]{1,200})/$", ConsoleConsumer.as_asgi()),
]
