"""Property-based fuzzing of the reference server's API: no input gives a 5xx.

Hypothesis generates request bodies of every shape (JSON of arbitrary structure,
strings where objects belong, wrong types, huge or odd strings, raw bytes) for
each endpoint of /openapi.json, against one server with a real database and an
in-process registry.  Every answer must be below 500 and be JSON.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .refserver_helpers import make_client, person

_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
_json = st.recursive(
    _scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=12
)
_field_values = st.one_of(
    _scalar, st.text(alphabet="0123456789", min_size=0, max_size=20), st.just("3273012104900001"), st.just("a@example.org")
)


def _bodies(fields: list[str]) -> st.SearchStrategy[object]:
    known = st.fixed_dictionaries({f: _field_values for f in fields}, optional={"extra": _scalar})
    return st.one_of(known, _json)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    with make_client(tmp_path_factory.mktemp("fuzz")) as c:
        yield c


def test_openapi_lists_the_fuzzed_endpoints(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/register", "/api/verify-email", "/api/verify-nik", "/api/join-batch", "/api/photo"} <= set(paths)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    endpoint=st.sampled_from(
        [
            ("/api/register", ["name", "email", "nik", "birth_date", "phone"]),
            ("/api/verify-email", ["token"]),
            ("/api/verify-nik", ["registrant_id", "nik"]),
            ("/api/join-batch", ["registrant_id", "batch_id"]),
        ]
    ),
    data=st.data(),
)
def test_json_endpoints_never_answer_5xx(client, endpoint, data) -> None:
    path, fields = endpoint
    body = data.draw(_bodies(fields))
    raw = data.draw(st.one_of(st.just(None), st.binary(max_size=64)))
    if raw is None:
        r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    else:
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (path, body, r.text)
    assert isinstance(r.json(), dict)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rid=st.text(max_size=30), payload=st.binary(max_size=300), ctype=st.sampled_from(["image/jpeg", "image/png", "text/plain"]))
def test_photo_upload_never_answers_5xx(client, rid, payload, ctype) -> None:
    r = client.post("/api/photo", data={"registrant_id": rid}, files={"photo": ("x", payload, ctype)})
    assert r.status_code < 500, r.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rid=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40))
def test_status_never_answers_5xx(client, rid) -> None:
    r = client.get(f"/api/registrants/{quote(rid, safe='')}")
    assert r.status_code < 500


def test_a_valid_registration_still_works_after_fuzzing(client) -> None:
    assert client.post("/api/register", json=person()).status_code == 201
