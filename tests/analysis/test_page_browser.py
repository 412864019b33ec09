"""The page as a person uses it: headless Chromium (Debian's ``chromium``) driven by Playwright.

Uploads a photo through the file input, waits for the answer, checks the headline, the table and
the patch boxes against ``predict``'s numbers for the same file, uploads a corrupt file and checks
its sentence, then a good photo again; every request the page makes is recorded and the test fails
on any that leaves 127.0.0.1; a screenshot is saved.

Run as a script it photographs the page over a real export for the README::

    python tests/analysis/test_page_browser.py --model=models/exif_shutter --photo=... \\
        --screenshot=docs/page.png
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import urllib.parse

import pytest

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium phones home (component updates, sync), and
# a closed network refuses those connections; --disable-quic keeps it on plain TCP.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000
LOCAL = ("127.0.0.1",)


def browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return (f"no {CHROMIUM}: install Debian's browser with `apt-get install -y chromium` "
                f"(as root; .ci/run does it), never `playwright install`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no playwright: pip install -e '.[test]'"
    return ""


def remote_requests(urls) -> list[str]:
    """The recorded requests that leave 127.0.0.1 (data: and blob: URLs stay in the page)."""
    out = []
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("data", "blob", "about"):
            continue
        if parsed.hostname not in LOCAL:
            out.append(url)
    return out


def drive(url: str, steps, user_data_dir: str, screenshot: str) -> list[str]:
    """Opens ``url`` in a fresh Chromium profile and runs ``steps(page)``; returns every URL the
    page requested. Saves a full-page screenshot after the steps."""
    from playwright.sync_api import sync_playwright

    urls = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            context.on("request", lambda request: urls.append(request.url))
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            try:
                steps(page)
            finally:   # after a failure too: the picture says what the page showed
                page.screenshot(path=screenshot, full_page=True)
        finally:
            context.close()
    return urls


def upload(page, path: str) -> None:
    """Puts ``path`` into the photo input as a person does (clearing the previous file first)."""
    clear = page.locator("#photo button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.locator("#photo input[type=file]").wait_for(state="attached")
    page.locator("#photo input[type=file]").set_input_files(path)


def headline_becomes(page, text: str) -> str:
    page.wait_for_function(
        "t => (document.querySelector('#headline')?.innerText || '').includes(t)", arg=text, polling=200)
    return page.locator("#headline").inner_text()


def table_rows(page) -> list[list[str]]:
    """The dataframe's rows as shown (its grid cells, ``cell-<row>-<column>``)."""
    page.wait_for_function("() => document.querySelectorAll('#table [role=gridcell]').length",
                           polling=200)
    cells = {}
    for cell in page.locator("#table [role=gridcell]").all():
        row, column = (int(cell.get_attribute(k)) for k in ("data-row", "data-col"))
        cells[row, column] = cell.inner_text().strip()
    return [[cells[r, c] for c in range(1 + max(c for _, c in cells))]
            for r in range(1 + max(r for r, _ in cells))]


def patch_labels(page, count: int) -> list[str]:
    page.wait_for_function(
        "n => document.querySelectorAll('#patches .legend-item').length >= n", arg=count, polling=200)
    return [t.strip() for t in page.locator("#patches .legend-item").all_inner_texts()]


# ----------------------------------------------------------------------------------- the test

@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "ok")
def test_page_in_headless_chromium(tmp_path, page_exports):
    pytest.importorskip("gradio", reason="the serve extra: pip install -e '.[serve]'")
    from exif_keras.analysis import page as page_lib
    from exif_keras.serving import predictor

    from page_fixtures import as_predict_line, photos, running, write

    export = page_exports["joint"]
    files = write(str(tmp_path / "photos"), {**photos(), "corrupt.jpg": photos()["rgb.jpg"][:900]})
    good, corrupt, other = files["rgb.jpg"], files["corrupt.jpg"], files["cmyk.jpg"]
    out = io.StringIO()
    predictor.run([good, other], export, out=out, err=io.StringIO())
    lines = {line.split("  ")[0]: line for line in out.getvalue().splitlines()}
    page_ = page_lib.Page(export)
    with open(good, "rb") as f:
        expected = page_.answer(f.read())
    (_, boxes), _, _ = page_.evidence(open(good, "rb").read())
    with open(other, "rb") as f:
        other_headline = page_.answer(f.read()).headline
    assert other_headline != expected.headline   # each step shows a change (their EXIF differs)

    def steps(page):
        upload(page, good)
        shown = headline_becomes(page, expected.headline)
        rows = table_rows(page)
        # what the page shows is predict's line for the same file, to the last digit
        shown_answer = page_lib.Answer(headline=shown, rows=rows)
        assert f"{good}  {as_predict_line(page_, shown_answer)}" == lines[good]
        assert rows == expected.rows
        assert patch_labels(page, len(boxes)) == [label for _, label in boxes]
        page.locator("#figure img").wait_for()

        upload(page, corrupt)
        sentence = headline_becomes(page, "does not decode")
        assert sentence.startswith("This photo cannot be used: ") and "Traceback" not in sentence
        assert len(sentence.strip().splitlines()) == 1

        upload(page, other)
        headline_becomes(page, other_headline)
        patch_labels(page, len(boxes))

        page.locator(".gallery-item, button").filter(has_text="rgb.jpg").last.click()  # example
        headline_becomes(page, expected.headline)

    blocks = page_lib.build(page_, examples=[good])
    screenshot = str(tmp_path / "page.png")
    with running(blocks) as url:
        urls = drive(url, steps, str(tmp_path / "profile"), screenshot)
    assert urls and not remote_requests(urls), remote_requests(urls)
    assert os.path.getsize(screenshot) > 10_000


# --------------------------------------------------------------------------- the README's shot

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--photo", required=True)
    parser.add_argument("--screenshot", default="docs/page.png")
    parser.add_argument("--examples", default=os.path.join("data", "sample"))
    args = parser.parse_args(argv)
    problem = browser_missing()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tempfile

    from exif_keras.analysis import page as page_lib

    from page_fixtures import running

    page_ = page_lib.Page(args.model)
    blocks = page_lib.build(page_, page_lib.sample_examples(args.examples))

    def steps(page):
        upload(page, args.photo)
        page.wait_for_function(
            "() => (document.querySelector('#headline')?.innerText || '').trim().length > 0",
            polling=200)
        page.wait_for_function(
            "() => document.querySelectorAll('#patches .legend-item').length > 0", polling=200)
        page.locator("#figure img").wait_for()
        page.wait_for_timeout(500)

    with running(blocks) as url, tempfile.TemporaryDirectory() as profile:
        urls = drive(url, steps, profile, args.screenshot)
    from PIL import Image

    with Image.open(args.screenshot) as shot:   # a palette PNG: a third of the bytes
        shot.convert("RGB").quantize(256).save(args.screenshot, optimize=True)
    remote = remote_requests(urls)
    print(f"{args.screenshot}: {len(urls)} requests, {len(remote)} leaving 127.0.0.1 {remote}")
    return 1 if remote else 0


if __name__ == "__main__":
    sys.exit(main())
