"""`make noc-screenshots`: the README's pictures of the NOC, taken in Debian's headless Chromium.

The NOC serves the bench's data set (ops/bench/noc.py: a week of 10 sites, written to a temporary
DuckDB file) to a temporary viewer; Chromium logs in and saves the overview and an incident page as PNG
files (default docs/). No broker is needed: the pages only read the views.
"""

from __future__ import annotations

import argparse
import random
import secrets
import tempfile
import threading
import time
from pathlib import Path

from argon2 import PasswordHasher

from opsloop.config.settings import Settings
from opsloop.ops.bench.noc import fill
from opsloop.ops.noc import make_access, make_server
from opsloop.ops.noc_auth import Role, UserStore

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's packages


class Unaudited:
    """The pictures' NOC has no broker: its login's audit record is dropped (nothing here is approved)."""

    def send(self, records, wait=True, timeout_s=10.0) -> None:
        pass

    def close(self, timeout_s=5.0) -> None:
        pass


def take(out: Path) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="opsloop-noc-shots-") as tmp:
        settings = Settings(duckdb_path=Path(tmp) / "noc.duckdb", data_dir=Path(tmp))
        fill(settings.duckdb_file, random.Random(7))
        users = UserStore(Path(tmp) / "users.json", hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        password = secrets.token_urlsafe(16)
        users.add("wall", Role.VIEWER, password)
        server = make_server(settings, "127.0.0.1", 0, outbox=Unaudited())
        server.access = make_access(settings, "127.0.0.1", server.server_address[1], users)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        shots = []
        try:
            time.sleep(0.5)
            driver.get(server.url)
            driver.find_element(By.ID, "username").send_keys("wall")
            driver.find_element(By.ID, "password").send_keys(password)
            driver.find_element(By.CSS_SELECTOR, "form.login button").click()
            wait = WebDriverWait(driver, 120)
            driver.get(server.url + "?site=site-3")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart[data-points] .scatterlayer .trace"))
            shots.append(out / "noc-overview.png")
            driver.save_screenshot(str(shots[-1]))
            driver.get(server.url + "incidents/inc-s3-5")
            wait.until(expected_conditions.presence_of_element_located((By.ID, "sops")))
            shots.append(out / "noc-incident.png")
            driver.save_screenshot(str(shots[-1]))
        finally:
            driver.quit()
            server.shutdown()
            server.server_close()
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the PNG files")
    args = parser.parse_args(argv)
    for shot in take(Path(args.out)):
        print(f"wrote {shot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
