"""WSGI entry point: `gunicorn wsgi:app`."""
from crypto_app import create_app

app = create_app()
