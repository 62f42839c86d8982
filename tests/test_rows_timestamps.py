"""Timestamps come back from Postgres as Django's loader gives them, by psycopg's C loader."""

import datetime

import pytest
from django.db import connection
from psycopg.pq import Format

from memory_admin.models import Record
from memory_admin.rows import FastTimestamptz
from memory_admin.services.records import write_record
from tests.conftest import actor


@pytest.mark.django_db
def test_timestamps_read_back_aware_in_utc_by_the_c_loader(ns, alpha):
    written, _ = write_record(
        ns=ns, key="plan", value={"v": 1}, expected_version=0, fence=None, actor=actor(alpha)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s::timestamptz, '2024-01-02 03:04:05.123456+05:30'::timestamptz", [written.updated]
        )
        echoed, offset = cursor.fetchone()
        loader = cursor.cursor.adapters.get_loader(
            cursor.cursor.adapters.types["timestamptz"].oid, Format.TEXT
        )
    stored = Record.objects.get(pk=written.pk)

    assert loader is FastTimestamptz
    assert stored.updated == written.updated == echoed
    assert stored.updated.tzinfo is echoed.tzinfo is offset.tzinfo is datetime.UTC
    assert offset == datetime.datetime(2024, 1, 1, 21, 34, 5, 123456, tzinfo=datetime.UTC)
