"""The framework's floor: a Django hello-world view on the same ASGI server as ours (uvicorn, as
many workers), with the middleware `startproject` gives, no database, no Redis.

    python -m uvicorn --port 8001 bench.hello:application

HELLO_BARE=1 drops the middleware: how much of the floor is the middleware chain (bench/README.md).
"""

import os

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path


def hello(request):
    return HttpResponse(b'{"hello": "world"}', content_type="application/json")


urlpatterns = [path("hello", hello)]

STARTPROJECT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-hello-world-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
    MIDDLEWARE=[] if os.environ.get("HELLO_BARE") else STARTPROJECT_MIDDLEWARE,
    DATABASES={},
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
