"""The app `flask ...` loads (`.flaskenv`): the API's app, except that it finds this checkout's embedded
servers by itself and never needs a database to show help.

DATABASE_URL / REDIS_URL win when set. Unset, the URLs come from var/embedded.json, written when the
embedded servers start (make run, make test, ...), if those servers run now. Without either, the app is still
built (`flask etl --help` works) and each command that needs a server says, in one line, how to get one.
A bad setting is one line without a traceback, exit status 2.
"""
from __future__ import annotations

import os
from dataclasses import replace

from . import checkout, create_app
from .config import settings_or_exit
from .logs import configure_logging

# Flask-SQLAlchemy needs some URL to build the app; this one can never connect (.invalid never resolves)
NO_DATABASE = "postgresql://database-url-is-not-set.invalid/cryptoflow"
HOW = ("{name} is not set and the embedded servers of this checkout are not running: start them with "
       "`make run` (or `python -m crypto_app.checkout exec -- ...`), or set {name}")


def create_cli_app():
    env = dict(os.environ)
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not env.get(name)]
    if missing:
        found = checkout.embedded_urls()
        env.update({name: found[name] for name in missing if name in found})
    settings = settings_or_exit(env)
    unavailable = {name: HOW.format(name=name) for name in ("DATABASE_URL", "REDIS_URL") if not env.get(name)}
    if "DATABASE_URL" in unavailable:
        settings = replace(settings, database_url=NO_DATABASE)
    app = create_app(settings=settings)
    app.config["SERVERS_MISSING"] = unavailable
    configure_logging(settings.log_level, service="cli")
    return app
