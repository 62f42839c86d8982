"""The console: pages.py (GET, viewers watch) and actions.py (POST, operators act), sharing
console.py's decorators; screens.py builds what each screen shows, for the page and for the
live pushes (memory_admin.live); diff.py the line differences of JSON values."""
