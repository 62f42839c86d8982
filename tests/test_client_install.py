"""The client installs alone with `pip install client/` into a fresh virtualenv and imports
without Django."""

from __future__ import annotations

import subprocess
import sys
import venv

from tests.conftest import ROOT


def test_the_client_installs_alone_into_a_fresh_virtualenv_and_never_imports_django(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip comes from this interpreter, aimed at the new one
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, sys; import memory_admin_client as c;"
            "assert 'django' not in sys.modules; print(c.__file__);"
            "print(sorted(r.split('>')[0].split('<')[0] for r in m.requires('memory-admin-client')"
            " if 'extra ==' not in r))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    where, requires = check.stdout.splitlines()
    assert where.startswith(str(env_dir))  # installed, not picked up from the checkout
    assert requires == "['httpx']"  # extras (langgraph) are asked for by name, never pulled in
    django = subprocess.run([str(python), "-c", "import django"], capture_output=True, timeout=60)
    assert django.returncode != 0  # nothing pulled Django in
