"""/docs (Swagger UI) and /redoc load every asset from the API itself: they work offline."""

from __future__ import annotations

import re

import pytest

from tests.support.app import Api


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_packaged_assets(api: Api, page: str) -> None:
    response = api.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "/openapi.json" in html
    assert not re.search(r"https?://", html.replace("http://www.w3.org", "")), html
    assets = re.findall(r"""(?:src|href)=["']?(/docs-assets/[^"'>\s]+)""", html)
    assert assets, html
    for asset in assets:
        fetched = api.client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 1000, asset


def test_the_oauth2_redirect_page_is_served(api: Api) -> None:
    assert api.client.get("/docs/oauth2-redirect").status_code == 200
