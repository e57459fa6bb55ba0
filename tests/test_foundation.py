"""The foundation: settings, the app factory, the migrated schema."""
import pytest

from crypto_app import create_app
from crypto_app.config import ConfigError, load_settings


def test_bad_setting_fails_naming_the_variable():
    with pytest.raises(ConfigError, match="COINGECKO_RATE_PER_MINUTE"):
        load_settings({"COINGECKO_RATE_PER_MINUTE": "fast"})
    with pytest.raises(ConfigError, match="PORT"):
        load_settings({"PORT": "99999"})
    with pytest.raises(ConfigError, match="COINGECKO_API_PLAN"):
        load_settings({"COINGECKO_API_PLAN": "gold"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings({"DATABASE_URL": "mysql://db/x"})


def test_pro_plan_switches_the_default_base_url():
    pro = {"COINGECKO_API_PLAN": "pro", "COINGECKO_API_KEY": "k"}
    assert load_settings(pro).coingecko_base_url.startswith("https://pro-api.")
    assert "pro" not in load_settings({}).coingecko_base_url


def test_public_settings_hide_secrets():
    s = load_settings({"API_TOKEN": "s3cret", "COINGECKO_API_KEY": "CG-canary"})
    text = repr(s.public_dict())
    assert "s3cret" not in text and "CG-canary" not in text


def test_factory_builds_an_app_bound_to_postgres(app, db_conn):
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg2://")
    with db_conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cur.fetchall()}
    assert {"assets", "asset_identifiers", "quotes", "latest_quotes", "raw_payloads", "etl_runs",
            "checkpoints", "rejected_records"} <= tables


def test_factory_refuses_to_start_without_a_database():
    with pytest.raises(RuntimeError, match="DATABASE_URL"):
        create_app(settings=load_settings({}))


def test_liveness(client):
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("env, named", [
    ({"COINGECKO_API_PLAN": "pro"}, "COINGECKO_API_KEY"),
    ({"COINGECKO_API_PLAN": "demo"}, "COINGECKO_API_KEY"),
    ({"COINGECKO_BASE_URL": "https://pro-api.coingecko.com/api/v3"}, "COINGECKO_API_KEY"),
    ({"COINPAPRIKA_BASE_URL": "https://api-pro.coinpaprika.com/v1"}, "COINPAPRIKA_API_KEY"),
    ({"BIND_HOST": "0.0.0.0; rm -rf"}, "BIND_HOST"),
    ({"FLOWER_BASIC_AUTH": "admin:x,nopassword"}, "FLOWER_BASIC_AUTH"),
])
def test_incomplete_settings_are_refused_at_start(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env)
    assert load_settings({}).bind_host == "127.0.0.1"
    assert load_settings({"COINGECKO_API_PLAN": "demo", "COINGECKO_API_KEY": "k"}).coingecko_api_plan == "demo"
