"""HTTP API: one blueprint module per resource, registered here."""


def register_api(app, api):
    from . import errors, health

    errors.register(app)
    api.register_blueprint(health.blp)
