"""Model names and versions: one rule each, enforced on the raw path of every model endpoint in
every encoding, before any lookup (issue 15, item 3)."""

from __future__ import annotations

import json

import pytest

from app.http import paths
from app.v2 import names
from app.v2.errors import InvalidInput
from tests.conftest import Server
from tests.rawhttp import exchange, request_bytes

GOOD_NAMES = ["demo", "_private", "a.b-c_d", "A9", "x" * 255]
BAD_NAMES = [".", "..", "", "-lead", ".hidden", "a/b", "a b", "naïve", "a\x00b", "x" * 256, "%2e"]
GOOD_VERSIONS = ["1", "9", "10", "123456789012345678"]
BAD_VERSIONS = ["0", "01", "", "-1", "+1", "1.0", " 1", "²", "١", "１", "1\x00", "1234567890123456789", "9" * 5000]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"model names match \^\[A-Za-z0-9_\]"):
        names.check_name(name)


@pytest.mark.parametrize("version", GOOD_VERSIONS)
def test_good_versions_pass(version: str) -> None:
    assert names.check_version(version) == int(version)


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_versions_are_refused_naming_the_rule(version: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII decimal digits without a leading zero"):
        names.check_version(version)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"/v2/models/demo/infer", ("demo", None)),
        (b"/v2/models/demo/versions/2/ready", ("demo", "2")),
        (b"/%76%32/models/demo/versions/%31", ("demo", "1")),  # encoded, but decoded once: fine
        (b"/v2/repository/models/demo/load", ("demo", None)),
        (b"/v2/health/ready", None),
        (b"/v2", None),
        (b"/metrics", None),
    ],
)
def test_raw_paths_are_split_before_decoding(raw: bytes, want: tuple[str, str | None] | None) -> None:
    assert paths.from_raw_path(raw) == want


# Every endpoint that addresses a model, present (metadata, ready, infer) or added by other
# issues (config, stats, repository): the guard checks the path before routing, so all of them.
ENDPOINTS = [
    ("GET", "/v2/models/{n}"),
    ("GET", "/v2/models/{n}/versions/{v}"),
    ("GET", "/v2/models/{n}/ready"),
    ("GET", "/v2/models/{n}/versions/{v}/ready"),
    ("POST", "/v2/models/{n}/infer"),
    ("POST", "/v2/models/{n}/versions/{v}/infer"),
    ("GET", "/v2/models/{n}/config"),
    ("GET", "/v2/models/{n}/versions/{v}/config"),
    ("GET", "/v2/models/{n}/stats"),
    ("GET", "/v2/models/{n}/versions/{v}/stats"),
    ("POST", "/v2/repository/models/{n}/load"),
    ("POST", "/v2/repository/models/{n}/unload"),
]
# (raw name, raw version) as they go on the wire, and the rule the answer must name.
HOSTILE = [
    (b"%2e%2e", b"1", "model names"),
    (b"..", b"1", "model names"),
    (b"%2E", b"1", "model names"),
    (b"demo%2f..%2fdemo", b"1", "model names"),
    (b"%252e%252e", b"1", "model names"),  # double encoding
    (b"de%00mo", b"1", "model names"),
    (b"%C3%A9t%C3%A9", b"1", "model names"),
    (b"%FF", b"1", "model names"),  # not UTF-8
    (b"demo", b"%C2%B2", "versions"),  # superscript two: isdigit() says yes
    (b"demo", b"%D9%A1", "versions"),  # Arabic-Indic one
    (b"demo", b"%EF%BC%91", "versions"),  # fullwidth one
    (b"demo", b"01", "versions"),
    (b"demo", b"0", "versions"),
    (b"demo", b"1%00", "versions"),
    (b"demo", b"%2e%2e", "versions"),
    (b"demo", b"%2531", "versions"),  # double-encoded "1"
    (b"demo", b"9" * 30, "versions"),
]


@pytest.mark.parametrize(("method", "template"), ENDPOINTS, ids=[f"{m} {t}" for m, t in ENDPOINTS])
def test_every_model_endpoint_refuses_hostile_names_and_versions(server: Server, method: str, template: str) -> None:
    body = b'{"inputs": []}' if method == "POST" else b""
    for raw_name, raw_version, rule in HOSTILE:
        if "{v}" not in template and raw_version != b"1":
            continue
        target = template.encode().replace(b"{n}", raw_name).replace(b"{v}", raw_version)
        resp = exchange(server.hostport, request_bytes(method, target, {"Content-Type": "application/json"}, body))
        assert resp.status == 400, (target, resp)
        assert rule in json.loads(resp.body)["error"], (target, resp.body)


def test_raw_non_ascii_in_the_path_gets_a_json_400(server: Server) -> None:
    for target in (b"/v2/models/demo/versions/\xd9\xa1", b"/v2/models/d\xc3\xa9mo/ready"):
        resp = exchange(server.hostport, request_bytes("GET", target))
        assert resp.status == 400 and "percent-encoded" in json.loads(resp.body)["error"]


def test_good_names_still_reach_their_model(server: Server) -> None:
    for target in (b"/v2/models/demo", b"/v2/models/demo/versions/1", b"/%76%32/models/demo/versions/%31/ready"):
        resp = exchange(server.hostport, request_bytes("GET", target))
        assert resp.status == 200, (target, resp)
    resp = exchange(server.hostport, request_bytes("GET", b"/v2/models/nosuch_model"))
    assert resp.status == 404 and "unknown model" in json.loads(resp.body)["error"]
    resp = exchange(server.hostport, request_bytes("GET", b"/v2/models/demo/versions/7"))
    assert resp.status == 404


def test_a_version_in_the_query_follows_the_rule_too(server: Server) -> None:
    for target in (b"/v2/models/demo?version=%C2%B2", b"/v2/models/demo/ready?version=01", b"/v2/models/demo?a=1&version=%00"):
        resp = exchange(server.hostport, request_bytes("GET", target))
        assert resp.status == 400 and "versions are ASCII" in json.loads(resp.body)["error"], (target, resp)
    assert exchange(server.hostport, request_bytes("GET", b"/v2/models/demo?version=1")).status == 200
