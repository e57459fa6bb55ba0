"""The OpenAPI document: well formed, complete, and true to what the endpoints really answer.

openapi-spec-validator is not installed, so the structure is checked here, and real responses are
validated against their declared schemas by a small validator of the JSON Schema subset the document
uses (type, nullable, properties, required, additionalProperties, items, enum, $ref).
"""
import re
from datetime import timedelta

import pytest

import api_data as d

METHODS = {"get", "post", "put", "patch", "delete"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


@pytest.fixture
def spec(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def resolve(spec, node):
    while "$ref" in node:
        parts = node["$ref"].lstrip("#/").split("/")
        node = spec
        for part in parts:
            node = node[part]
    return node


def validate(spec, schema, value, where="$"):
    schema = resolve(spec, schema)
    if value is None:
        assert schema.get("nullable") or not schema, f"{where}: null but not nullable"
        return
    kind = schema.get("type")
    if kind:
        ok = isinstance(value, TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        assert ok, f"{where}: {value!r} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if kind == "string" and schema.get("format") == "decimal":
        assert re.fullmatch(r"-?\d+(\.\d+)?", value), f"{where}: {value!r} is not a plain decimal"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{where}: required {name} missing"
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                validate(spec, properties[key], item, f"{where}.{key}")
            else:
                assert extra is not False, f"{where}: {key} is not documented"
                if isinstance(extra, dict) and extra:
                    validate(spec, extra, item, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(spec, schema["items"], item, f"{where}[{i}]")


def check(spec, client, method, url, status, template, **kwargs):
    """Call the endpoint and validate its body against the schema documented for that status."""
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    doc = resolve(spec, spec["paths"][template][method]["responses"][str(status)])
    validate(spec, doc["content"]["application/json"]["schema"], response.get_json(), f"{method} {url}")
    return response.get_json()


def test_document_is_complete_and_well_formed(spec, client):
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "cryptoflow"
    assert "503 when `unhealthy`" in spec["info"]["description"]
    expected = {"/api/v1/data", "/api/v1/assets", "/api/v1/assets/{asset_ref}", "/api/v1/assets/{asset_ref}/history",
                "/api/v1/stats", "/api/v1/sources", "/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/compare", "/health",
                "/health/live", "/health/ready", "/metrics", "/api/v1/metrics", "/data", "/stats",
                "/api/v1/etl/jobs", "/api/v1/etl/run/{source}"}
    assert expected <= set(spec["paths"])
    refs = re.findall(r'"\$ref": "([^"]+)"', client.get("/openapi.json").get_data(as_text=True))
    for ref in set(refs):
        assert resolve(spec, {"$ref": ref}), ref  # every reference resolves
    for path, item in spec["paths"].items():
        for param in re.findall(r"{(\w+)}", path):
            declared = [p["name"] for op in item.values() if isinstance(op, dict) for p in op.get("parameters", [])]
            declared += [p["name"] for p in item.get("parameters", [])]
            assert param in declared, f"{path}: path parameter {param} undocumented"
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op.get("summary"), f"{method} {path} has no summary"
            assert any(code.startswith("2") for code in op["responses"]), f"{method} {path}: no success"
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"status", "error", "message", "details", "request_id"}
    for name in ("UNPROCESSABLE_ENTITY", "DEFAULT_ERROR"):
        assert resolve(spec, spec["components"]["responses"][name])["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/Error"}
    post = spec["paths"]["/api/v1/runs"]["post"]
    assert post["security"] == [{"bearerAuth": []}] and {"202", "401", "403", "409", "503"} <= set(post["responses"])
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/api/v1/etl/run/{source}"]["post"]["security"] == [{"bearerAuth": []}]
    health = spec["paths"]["/health"]["get"]["responses"]
    assert {"200", "503"} <= set(health)
    price = spec["components"]["schemas"]["QuoteRow"]["properties"]["price_usd"]
    assert price["type"] == "string" and "string" in price["description"]


def test_responses_match_their_declared_schemas(spec, client, db_conn):
    run_id = d.run(db_conn, "coingecko", loaded=2, stats={"http_status": {"200": 1}})
    older = d.run(db_conn, "coingecko", created_at=d.NOW - timedelta(hours=1))
    d.rejected(db_conn, run_id, "coingecko", "validation", {"price_usd": ["negative"]}, {"id": "x"})
    btc = d.asset(db_conn, "bitcoin", "BTC", "Bitcoin", {"coingecko": "bitcoin"})
    d.latest(db_conn, btc, "coingecko", "87440.5", run_id, market_cap="1.5E+12", volume="0.00000001",
             market_cap_rank=1, change_24h_pct="-1.25")
    d.quote(db_conn, btc, "coingecko", "87000", older, d.NOW - timedelta(hours=1))
    d.quote(db_conn, btc, "coingecko", "87440.5", run_id, d.NOW - timedelta(minutes=2))
    d.market(db_conn, 3)

    page = check(spec, client, "get", "/api/v1/data?limit=2", 200, "/api/v1/data")
    assert page["metadata"]["next_cursor"]
    check(spec, client, "get", f"/api/v1/data?cursor={page['metadata']['next_cursor']}", 200, "/api/v1/data")
    row = check(spec, client, "get", "/data?symbol=BTC", 200, "/data")["data"][0]
    assert row["market_cap_usd"] == "1500000000000" and row["volume_24h_usd"] == "0.00000001"
    check(spec, client, "get", "/api/v1/data?page_size=500", 422, "/api/v1/data")
    check(spec, client, "get", "/api/v1/assets?q=bit", 200, "/api/v1/assets")
    check(spec, client, "get", f"/api/v1/assets/{btc}", 200, "/api/v1/assets/{asset_ref}")
    check(spec, client, "get", "/api/v1/assets/nope", 404, "/api/v1/assets/{asset_ref}")
    check(spec, client, "get", "/api/v1/assets/bitcoin/history", 200, "/api/v1/assets/{asset_ref}/history")
    check(spec, client, "get", "/api/v1/assets/bitcoin/history?interval=1h", 200, "/api/v1/assets/{asset_ref}/history")
    check(spec, client, "get", "/api/v1/stats", 200, "/api/v1/stats")
    d.run(db_conn, "coingecko", "failed", error="boom", stats={"rate_limit_waits": 1, "http_status": {"429": 2}})
    check(spec, client, "get", "/api/v1/sources", 200, "/api/v1/sources")
    check(spec, client, "get", "/stats", 200, "/stats")
    check(spec, client, "get", "/api/v1/runs", 200, "/api/v1/runs")
    check(spec, client, "get", "/api/v1/etl/jobs", 200, "/api/v1/etl/jobs")
    check(spec, client, "get", f"/api/v1/runs/{run_id}", 200, "/api/v1/runs/{run_id}")
    check(spec, client, "get", f"/api/v1/runs/compare?a={older}&b={run_id}", 200, "/api/v1/runs/compare")
    check(spec, client, "get", "/health", 200, "/health")
    check(spec, client, "get", "/health/ready", 200, "/health/ready")
    check(spec, client, "post", "/api/v1/runs", 401, "/api/v1/runs", json={"source": "csv"})
    check(spec, client, "post", "/api/v1/runs", 422, "/api/v1/runs", json={"source": "x"},
          headers={"Authorization": "Bearer test-token"})


def test_trigger_responses_match_their_schemas(spec, client, test_env, db_conn):
    from crypto_app.coordination import SourceLock, redis_client

    auth = {"Authorization": "Bearer test-token"}
    check(spec, client, "post", "/api/v1/runs", 202, "/api/v1/runs", json={"source": "csv"}, headers=auth)
    assert SourceLock(redis_client(test_env["REDIS_URL"]), "coingecko").acquire("run-1", 60)
    check(spec, client, "post", "/api/v1/runs", 409, "/api/v1/runs", json={"source": "coingecko"}, headers=auth)
    check(spec, client, "post", "/api/v1/etl/run/coinpaprika", 202, "/api/v1/etl/run/{source}", headers=auth)
