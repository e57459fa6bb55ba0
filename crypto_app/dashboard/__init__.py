"""The operator's dashboard: read-only HTML pages at /, /assets, /assets/<ref> and /runs/<id>.

Flask renders each page's frame with Jinja; the page's script then reads the same JSON API the clients
use (/api/v1/sources, /api/v1/runs, /api/v1/assets, /health, ...) and refreshes it in place every
`?refresh=` seconds (default 15) without reloading the page. Nothing here touches the database or holds a
token. Every value from the API is put in the page as text (never as HTML), and a Content-Security-Policy
allows only the app's own scripts and styles: an asset named `<script>...` from an upstream stays text.

`GET /` with `Accept: application/json` (and no text/html) answers a small JSON index of the API instead,
for scripts that probe the root URL.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request, url_for

blp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                static_url_path="/dashboard/static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@blp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-cache"
    return response


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes["application/json"] > \
        request.accept_mimetypes["text/html"]


@blp.route("/")
def overview():
    if _wants_json():
        return jsonify({
            "name": "cryptoflow", "dashboard": url_for("dashboard.overview"), "docs": "/docs",
            "openapi": "/openapi.json", "health": "/health", "data": "/api/v1/data",
            "assets": "/api/v1/assets", "runs": "/api/v1/runs", "sources": "/api/v1/sources",
            "stats": "/api/v1/stats", "metrics": "/metrics"})
    return render_template("dashboard/overview.html", page="overview")


@blp.route("/assets")
def assets():
    return render_template("dashboard/assets.html", page="assets", query=request.args.get("q", "")[:100])


@blp.route("/assets/<asset_ref>")
def asset(asset_ref: str):
    return render_template("dashboard/asset.html", page="asset", asset_ref=asset_ref[:200])


@blp.route("/runs/<uuid:run_id>")
def run(run_id):
    return render_template("dashboard/run.html", page="run", run_id=str(run_id))
