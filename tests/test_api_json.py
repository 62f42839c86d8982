"""The API's answers written by orjson (api/common.json_response) read as Django's JsonResponse
wrote them: dates, decimals and UUIDs as DjangoJSONEncoder writes them, keys that are not
strings as json.dumps writes them, text as it is."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

from django.http import JsonResponse

from memory_admin.api.common import json_response


def test_an_answer_reads_as_jsonresponse_wrote_it():
    data = {
        "at": datetime(2026, 11, 30, 23, 1, 2, 345678, tzinfo=UTC),
        "on": date(2026, 11, 30),
        "n": Decimal("1.50"),
        "id": uuid.UUID(int=7),
        1: "one",
        "text": 'ünï \u2028 "q" </script>',
        "big": 2**64 - 1,
        "bigger": [10**20, -(10**30)],  # past orjson's 64 bits: jsonb gives a stored 1e20 back so
        "nested": [{"x": None, "y": True, "z": 1.25}],
    }
    ours = json_response(data, status=201)
    django = JsonResponse(data, status=201, json_dumps_params={"ensure_ascii": False})
    assert json.loads(ours.content) == json.loads(django.content)
    assert (ours.status_code, ours["Content-Type"]) == (django.status_code, django["Content-Type"])
