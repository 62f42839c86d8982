"""How a doorbell reaches many open consoles of one process: the web process keeps what it
loaded out of the garbage collector's full passes."""

from __future__ import annotations

import gc


def test_the_web_process_keeps_what_it_loaded_out_of_full_collections():
    import config.asgi  # noqa: F401  (the web process' application)

    assert gc.get_freeze_count() > 10_000
