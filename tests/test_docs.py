"""The docs pages load their JavaScript and CSS from the app itself (no CDN needed)."""
import re


def test_swagger_ui_and_redoc_pages_reference_assets_the_app_serves(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.get_data(as_text=True))
        assert assets, page
        for url in assets:
            assert url.startswith("/docs-assets/"), url        # nothing from a CDN
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.data) > 10_000, url
