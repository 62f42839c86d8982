"""The demo team of `manage.py demo`: agent processes that use the Python client only."""
