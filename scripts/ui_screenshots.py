"""Rebuild ``docs/ui-before.png``, ``docs/ui-during.png`` and ``docs/ui-after.png``: the
``zsm ui`` page before, during and after upscaling the bundled sample clip with the
bundled weights (about a minute on a 2-core CPU).

Needs the ``dev`` extra (Gradio, Selenium) and Debian's ``chromium`` and
``chromium-driver``. Each PNG is scaled to 800 pixels wide and reduced to the most
colours (256, 128, 64 or 32) that keep it under 140 KB.

    python scripts/ui_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from zsm.ui.config import UiSettings
from zsm.ui.server import start

WIDTH, HEIGHT = 1280, 1400
MAX_BYTES = 140_000


def save(driver: webdriver.Chrome, path: Path) -> None:
    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    img = img.resize((800, round(img.height * 800 / img.width)), Image.Resampling.LANCZOS)
    for colours in (256, 128, 64, 32):
        data = io.BytesIO()
        # No dithering: its noise costs more bytes than the colours it saves.
        small = img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(data, "PNG", optimize=True)
        if data.tell() < MAX_BYTES:
            break
    path.write_bytes(data.getvalue())
    print(f"{path}: {path.stat().st_size / 1000:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    app = start(UiSettings(device="cpu"))
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 600)
        driver.get(app.url)
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[contains(., 'sample')]")))
        driver.find_element(By.XPATH, "//button[contains(., 'sample')]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-info"), "Output"))
        time.sleep(1)  # the input player's first frame
        save(driver, args.out / "ui-before.png")
        driver.find_element(By.ID, "zsm-start").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-result"), "left"))
        time.sleep(8)  # a third of the way or so
        driver.execute_script("window.scrollTo(0, 0)")
        save(driver, args.out / "ui-during.png")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-sheet img")))
        time.sleep(2)
        driver.execute_script("window.scrollTo(0, 0)")
        save(driver, args.out / "ui-after.png")
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main()
