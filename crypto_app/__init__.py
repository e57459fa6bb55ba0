"""cryptoflow: ingest crypto market data from several sources and serve it over HTTP."""
from __future__ import annotations

from flask import Flask

from .api import docs_assets
from .api.readconn import NO_JIT
from .config import Settings, load_settings
from .extensions import api as rest_api, db, migrate
from .logs import configure_logging


def create_app(test_config: dict | None = None, settings: Settings | None = None) -> Flask:
    """Build the Flask app: settings from the environment (or `settings`), extensions, blueprints."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)   # service: api, worker, beat, flower or cli (logs.detect_service)
    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        SQLALCHEMY_DATABASE_URI=_sqlalchemy_url(settings.database_url),
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10,
                                   "connect_args": {"connect_timeout": 5, "options": NO_JIT}},
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_TITLE="cryptoflow",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=docs_assets.SWAGGER_UI_URL,
        OPENAPI_REDOC_PATH="/redoc",
        OPENAPI_REDOC_URL=docs_assets.REDOC_URL,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        raise RuntimeError("DATABASE_URL is not set: start through `make run`, or point it at PostgreSQL")

    db.init_app(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()))
    rest_api.init_app(app)

    from . import models  # noqa: F401  (register the tables with SQLAlchemy)
    from .api import register_api
    from .cli import register_cli

    register_api(app, rest_api)
    app.register_blueprint(docs_assets.blp)
    from .dashboard import blp as dashboard_blp

    app.register_blueprint(dashboard_blp)
    register_cli(app)
    return app


def _sqlalchemy_url(url: str | None) -> str | None:
    """SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the stack fixes psycopg2."""
    if not url:
        return url
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg2://" + rest
    return url


def _migrations_dir():
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / "migrations"
