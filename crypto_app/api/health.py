"""Health: database, broker, workers and freshness of each source."""
from flask_smorest import Blueprint
from sqlalchemy import text

from ..extensions import db

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness and readiness")


@blp.route("/live")
@blp.response(200)
def live():
    """The process answers."""
    return {"status": "alive"}


@blp.route("/ready")
@blp.response(200)
def ready():
    """The database answers."""
    db.session.execute(text("SELECT 1"))
    return {"status": "ready"}
