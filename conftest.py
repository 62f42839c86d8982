"""Environment that must exist before pytest-django imports config.settings.

pyproject.toml loads this file early with `-p conftest`; settings refuse to start without a
SECRET_KEY when DEBUG is off, as tests run. Keep fixtures and hooks out of this file:
tests/conftest.py is their place.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
# pytest-django keeps each test's transaction open while the test works (and pauses).
os.environ.setdefault("DB_IDLE_IN_TRANSACTION_SECONDS", "0")
# Tests use their own Redis database, so a run never touches the data of a dev server.
os.environ.setdefault("REDIS_DB", "15")
# The test processes share one Postgres with other runs, which may refuse connections for a
# few seconds when full; they wait for the pool as long as they used to. The fault suite's
# servers (tests/faults/cluster.py) run with production's default, which is what it measures.
os.environ.setdefault("DB_POOL_TIMEOUT", "10")

# With DATABASE_URL / REDIS_URL unset, the tests run on the embedded servers under ./var:
# started (or reused) here, before the settings look for them; tests/conftest.py stops at the
# end of the session what this started.
from config import embedded  # noqa: E402 - after the environment above

embedded.start_unset()
