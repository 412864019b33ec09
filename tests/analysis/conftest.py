"""Fixtures of the page's tests (test_page, test_page_browser, test_page_load)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def page_exports(tmp_path_factory) -> dict:
    """{"joint", "binary"}: tiny exports with their run folders (page_fixtures.make_export)."""
    from page_fixtures import make_export

    root = str(tmp_path_factory.mktemp("page_exports"))
    return {kind: make_export(root, kind) for kind in ("joint", "binary")}
