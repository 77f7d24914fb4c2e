"""Screenshot a report page in headless Chromium, as the README's docs/report.png was made:

    .venv/bin/python docs/screenshot.py workspace/runs/sentiment/<run>/eval/report.html docs/report.png
"""

import shutil
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main(page: str, out: str, width: int = 1280, height: int = 1150) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(Path(page).resolve().as_uri())
        time.sleep(2)  # plotly draws after load
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main(*sys.argv[1:3])
