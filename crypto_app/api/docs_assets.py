"""The JavaScript and CSS of the docs pages (/docs, /redoc), served by the app itself.

The pages then render without reaching a CDN (air-gapped deployments, locked-down browsers).
Swagger UI comes from the flask-swagger-ui package's copy of swagger-ui-dist; ReDoc's standalone bundle
(MIT, version 2.5.4 from the npm registry) is vendored in static/redoc with its licence.
"""
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, send_from_directory

SWAGGER_DIR = Path(flask_swagger_ui.__file__).parent / "dist"
REDOC_DIR = Path(__file__).parent / "static" / "redoc"
PREFIX = "/docs-assets"
SWAGGER_UI_URL = f"{PREFIX}/swagger-ui/"
REDOC_URL = f"{PREFIX}/redoc/redoc.standalone.js"

blp = Blueprint("docs_assets", __name__, url_prefix=PREFIX)


@blp.route("/swagger-ui/<path:filename>")
def swagger_ui(filename: str):
    return send_from_directory(SWAGGER_DIR, filename, max_age=86400)


@blp.route("/redoc/<path:filename>")
def redoc(filename: str):
    return send_from_directory(REDOC_DIR, filename, max_age=86400)
