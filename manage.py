#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if sys.argv[1:2] == ["serve"]:
        # serve runs the service: it starts the embedded servers for the URLs not given (and
        # stops them when it ends); every other command finds them running (config/embedded.py).
        from config import embedded

        embedded.start_unset()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
