"""The system's headless chromium for browser tests (Debian's `apt-get install chromium`).

Playwright drives it (`executable_path`); no browser is downloaded. `needs_chromium`
skips a test on a machine without it (.ci/run installs it, so CI runs them all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium (Debian's `apt-get install chromium`; .ci/run installs it)",
)
