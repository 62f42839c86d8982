from django.urls import re_path

from memory_admin.live.consumer import ConsoleConsumer, Refused

websocket_urlpatterns = [
    re_path(r"^ws/ns/(?P<ns>[A-Za-z0-9_.:@\-]{1,200})/$", ConsoleConsumer.as_asgi()),
    # Any other path: the handshake is refused (403), not a 500 with a traceback in the log.
    re_path(r"", Refused.as_asgi()),
]
