"""The live side of the console: from a committed event to the fragments a browser swaps in.

- layer.py: the channel layer (the only code that uses it): the relay's doorbell per namespace.
- feed.py: the Feed, one per namespace and process, which hears the doorbells, reads the log
  and renders each batch once for all the sockets that need it, and checks the layer's health.
- render.py: what a batch changed on each screen, one registered renderer per screen.
- consumer.py: the websocket itself (the hello, the cursor), and Refused.

Only this package (and routing, config/asgi) imports channels: an import-linter contract.
"""

from memory_admin.live.layer import broadcast, group_name
from memory_admin.live.render import MAX_REPLAY, cursor_html, render_changes

__all__ = ["MAX_REPLAY", "broadcast", "cursor_html", "group_name", "render_changes"]
