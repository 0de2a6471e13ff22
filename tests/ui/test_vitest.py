"""The web UI's component tests (Vitest + Testing Library), so `make test` runs them."""

from __future__ import annotations

import subprocess

from .conftest import FRONTEND


def test_vitest_suite_passes(npm, built_frontend):
    r = subprocess.run(
        [npm, "test", "--", "--reporter=dot"], cwd=FRONTEND, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


def test_the_page_typechecks(npm, built_frontend):
    r = subprocess.run([npm, "run", "typecheck"], cwd=FRONTEND, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
