"""`embedgate dev`'s demo portal in a real browser (Debian's Chromium, driven by Playwright for
Python): the page loads, asks its backend for a URL, embeds it with the official QuickSight
embedding SDK, and the SDK reports the content loaded; the simulator's ledger shows exactly one
redemption; a reload gets a new URL (one more redemption, none twice). A screenshot is saved to
target/screenshots/demo-portal.png.

Chromium runs with --ignore-certificate-errors: the simulator's HTTPS embed pages use a
self-signed certificate made at start-up.
"""

import json
import os
import re
import shutil
import subprocess
import threading
import unittest
import urllib.request

from playwright.sync_api import sync_playwright

from harness import BIN, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = os.path.join(ROOT, "target", "screenshots", "demo-portal.png")


def ledger(sim):
    with urllib.request.urlopen(f"{sim}/_sim/ledger") as resp:
        return json.load(resp)


class DemoPortalInChromium(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        args = [BIN, "dev"]
        for flag in ("--listen", "--admin-listen", "--sim-listen", "--compat-listen", "--demo-listen", "--sim-tls-listen"):
            args += [flag, "127.0.0.1:0"]
        cls.dev = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        banner = []
        for line in cls.dev.stdout:
            banner.append(line)
            if line.startswith("Open the EmbedUrl"):
                break
        text = "".join(banner)
        threading.Thread(target=lambda: [None for _ in cls.dev.stdout], daemon=True).start()
        cls.portal = re.search(r"Demo portal:\s+(http://\S+?)/?\s", text).group(1)
        cls.sim = re.search(r"QuickSight simulator (http://\S+)", text).group(1)

    @classmethod
    def tearDownClass(cls):
        cls.dev.terminate()
        cls.dev.wait(timeout=10)

    def test_the_sdk_loads_the_dashboard_once_per_view_and_a_reload_gets_a_new_url(self):
        before = ledger(self.sim)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--ignore-certificate-errors", "--no-sandbox"],
            )
            page = browser.new_page(viewport={"width": 1100, "height": 760}, ignore_https_errors=True)
            urls = []
            page.on("response", lambda r: urls.append(r.json()["EmbedUrl"]) if r.url.endswith("/api/embed-url") and r.ok else None)
            page.goto(self.portal)
            page.wait_for_selector('body[data-content-loaded="true"]', timeout=30_000)
            self.assertIn("Content loaded", page.inner_text("#status"))
            frame = page.frame_locator("#frame iframe").first
            self.assertIn("Embedded dashboard sales-2024.", frame.locator("#embedded").inner_text())
            self.assertEqual(frame.locator("#viewer").inner_text(), "alice")
            self.assertRegex(frame.locator("#session").inner_text(), r"\d+ min")
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            page.screenshot(path=SCREENSHOT)
            after_first = ledger(self.sim)
            self.assertEqual(after_first["redeemed"] - before["redeemed"], 1)

            page.reload()
            page.wait_for_selector('body[data-content-loaded="true"]', timeout=30_000)
            browser.close()
        after = ledger(self.sim)
        self.assertEqual(after["redeemed"] - before["redeemed"], 2, "one redemption per view")
        self.assertEqual(after["double_redemptions"], before["double_redemptions"])
        self.assertEqual(len(urls), 2)
        self.assertNotEqual(urls[0], urls[1], "a reload gets a new URL")
        self.assertTrue(all(u.startswith("https://") for u in urls))


if __name__ == "__main__":
    unittest.main(verbosity=2)
