"""lookalike report in a real (headless) Chromium: the page of tests/support/e2e_report_pages.py
renders with every image loaded, and nothing from the tables becomes markup or runs, even with the
page's Content-Security-Policy lifted. What the page holds is tested without a browser in
tests/unit/tools/test_report.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.support.e2e_report_pages import HOSTILE_IDS, HOSTILE_LABEL, Parsed, write_report

# --- in a real browser ------------------------------------------------------------------------


def find_chromium() -> str | None:
    override = os.environ.get("LOOKALIKE_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-probe', JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    title: document.title,
    scripts: document.scripts.length,
    injected: document.querySelectorAll('[onerror],[onmouseover],[data-x],[id^=injected]').length
  }));
});
</script>"""


@pytest.mark.slow  # three headless Chromium processes
def test_report_renders_in_headless_chromium(tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip(
            "Chromium not found (no chromium, chromium-browser or google-chrome on PATH, "
            "LOOKALIKE_CHROMIUM unset): the report was not rendered in a browser. "
            "Install it with scripts/install-chromium.sh"
        )
    out, ids, missing, pictures = write_report(tmp_path)
    url = out.as_uri()

    shot = tmp_path / "shot.png"
    run = chromium(browser, tmp_path / "profile1", f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(1 << 24)
    # Text and placeholders give a few hundred colours; photographs give tens of thousands.
    assert len(colours) > 5000, f"screenshot looks blank or imageless ({len(colours)} colours)"

    dom = chromium(browser, tmp_path / "profile2", "--dump-dom", "--virtual-time-budget=5000", url).stdout
    parsed = Parsed(dom)
    assert parsed.count("img") == pictures and parsed.count("section") == 6
    assert parsed.count("script") == 0 and parsed.count("b") == 0
    assert not any(attrs.get("id", "").startswith("injected") for _, attrs in parsed.tags)
    text = "".join(parsed.text)
    assert all(hostile in text for hostile in HOSTILE_IDS + [HOSTILE_LABEL])

    # The same page with its CSP lifted and a probe script added: the browser's own view of which
    # images decoded, and proof that nothing from the tables ran even where scripts may run.
    probe_page = tmp_path / "probe.html"
    page = out.read_text()
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium(
        browser, tmp_path / "profile3", "--dump-dom", "--virtual-time-budget=5000", probe_page.as_uri()
    ).stdout
    match = re.search(r'data-probe="([^"]*)"', dom)
    assert match, dom[-2000:]
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe == {"images": pictures, "loaded": pictures, "title": "Similar items", "scripts": 1, "injected": 0}
