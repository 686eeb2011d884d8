"""The package's running app documents itself over HTTP: ``/openapi.json`` lists the API's routes and
``/docs`` serves the Swagger page that reads it."""

from __future__ import annotations

ROUTES = {
    ("/v1/segment", "post"),
    ("/v1/predict", "post"),
    ("/v1/examples", "post"),
    ("/v1/examples", "get"),
    ("/v1/examples/{example_id}", "delete"),
    ("/v1/stats", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
}


def test_openapi_json_lists_the_routes(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    spec = r.json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "samgraph"
    served = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert ROUTES <= served, ROUTES - served
    params = {p["name"] for p in spec["paths"]["/v1/examples"]["get"]["parameters"]}
    assert {"collection", "label", "offset", "limit"} <= params


def test_docs_page_reads_the_openapi_json(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in r.text and "openapi.json" in r.text
