"""Experiment sources: pure parsing on plain data, the file source on real files, and the
http source against a real local HTTP server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deskhub.authenticators.experiments import clean_experiments
from deskhub.authenticators.sources import (
    DEFAULT_PATTERN,
    FileSource,
    GroupSource,
    HTTPSource,
    SourceError,
    experiments_from_groups,
    experiments_from_json,
    make_source,
    portal_url,
    table_from_csv,
    table_from_yaml,
)


# -- ldap-groups ------------------------------------------------------------------------
def test_default_pattern_takes_the_id_after_exp():
    groups = ["exp-mx-2026-042", "mx-staff", "exp-xfm-2026-007", "deskhub-admins", "exp-"]
    assert experiments_from_groups(groups, DEFAULT_PATTERN) == ["mx-2026-042", "xfm-2026-007"]


def test_pattern_without_id_group_takes_the_whole_match():
    assert experiments_from_groups(["p12345", "staff", "p9"], r"^p\d+$") == ["p12345", "p9"]


def test_group_source_results_are_cleaned_by_the_validator(caplog):
    raw = GroupSource().experiments("alice", ["exp-ok-1", "exp-../../etc", "exp-a/b", "exp-.x"])
    with caplog.at_level(logging.WARNING):
        assert clean_experiments(raw, logging.getLogger("t"), "test") == ["ok-1"]
    assert caplog.text.count("refused from test") == 3


# -- http: parsing -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, expected",
    [
        (["mx-1", "xfm-2"], ["mx-1", "xfm-2"]),
        ([{"id": "mx-1", "title": "x"}, {"id": 42}], ["mx-1", "42"]),
        ([], []),
    ],
)
def test_json_answers(data, expected):
    assert experiments_from_json(data) == expected


def test_json_items_and_id_fields():
    data = {"proposals": [{"number": "p-1"}, {"number": "p-2"}], "user": "alice"}
    assert experiments_from_json(data, id_field="number", items_field="proposals") == [
        "p-1",
        "p-2",
    ]


@pytest.mark.parametrize(
    "data, kwargs",
    [
        ({"proposals": []}, {}),
        ("mx-1", {}),
        ([{"name": "mx-1"}], {}),
        (["x"], {"items_field": "proposals"}),
    ],
)
def test_json_of_another_shape_is_an_error(data, kwargs):
    with pytest.raises(SourceError):
        experiments_from_json(data, **kwargs)


def test_json_odd_values_reach_the_validator_unchanged():
    raw = experiments_from_json([True, None, "../x", 7])
    assert raw == [True, None, "../x", "7"]
    assert clean_experiments(raw, logging.getLogger("t"), "t") == ["7"]


def test_portal_url_quotes_the_username():
    template = "https://portal/api/users/{username}/proposals"
    assert portal_url(template, "alice") == "https://portal/api/users/alice/proposals"
    assert portal_url(template, "a/../b?x") == "https://portal/api/users/a%2F..%2Fb%3Fx/proposals"


# -- file: parsing and the real file ---------------------------------------------------
def test_yaml_table():
    text = "alice: [mx-1, xfm-2]\nbob: mx-1\ncarol:\n"
    assert table_from_yaml(text) == {"alice": ["mx-1", "xfm-2"], "bob": ["mx-1"], "carol": []}
    assert table_from_yaml("") == {}


@pytest.mark.parametrize("text", ["[a, b]", "alice: [", "just text"])
def test_yaml_table_refuses_other_shapes(text):
    with pytest.raises(SourceError):
        table_from_yaml(text)


def test_csv_table():
    text = "username,experiment\nalice,mx-1\n\n# a comment\nalice, xfm-2\nbob,mx-1\n"
    assert table_from_csv(text) == {"alice": ["mx-1", "xfm-2"], "bob": ["mx-1"]}


def test_csv_table_refuses_a_bad_row():
    with pytest.raises(SourceError, match="line 2"):
        table_from_csv("alice,mx-1\nbob\n")


def test_file_source_rereads_a_changed_file(tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_text("alice: [mx-1]\n")
    source = FileSource(str(path))
    assert source.experiments("alice", []) == ["mx-1"]
    assert source.experiments("nobody", []) == []
    path.write_text("alice: [mx-1, mx-2]\n")
    later = time.time() + 5

    os.utime(path, (later, later))
    assert source.experiments("alice", []) == ["mx-1", "mx-2"]


def test_file_source_csv_and_missing_file(tmp_path):
    path = tmp_path / "experiments.csv"
    path.write_text("bob,xfm-9\n")
    assert FileSource(str(path)).experiments("bob", []) == ["xfm-9"]
    with pytest.raises(SourceError, match="cannot read"):
        FileSource(str(tmp_path / "missing.csv")).experiments("bob", [])


# -- make_source ---------------------------------------------------------------------
def test_make_source_default_is_ldap_groups():
    source = make_source({})
    assert isinstance(source, GroupSource) and source.pattern == DEFAULT_PATTERN


def test_make_source_kinds(tmp_path):
    assert isinstance(make_source({"source": "http", "url": "https://p/{username}"}), HTTPSource)
    assert isinstance(make_source({"source": "file", "path": "/x.csv"}), FileSource)


def test_make_source_refuses_a_setting_of_another_source():
    with pytest.raises(ValueError, match="'auth.experiments.url' is not a setting of the ldap"):
        make_source({"pattern": "^p", "url": "https://p/{username}"})


# -- http: against a real server ---------------------------------------------------------
class Portal(BaseHTTPRequestHandler):
    """A facility portal: /api/users/NAME/proposals, bearer token "s3cret"."""

    answers: dict[str, Any] = {
        "alice": [{"id": "mx-1"}, {"id": "xfm-2"}, {"id": "../etc"}],
        "bob": [],
    }

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Portal.seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Bearer s3cret":
            return self._send(401, {"error": "no"})
        parts = self.path.split("/")
        name = parts[3] if len(parts) > 4 else ""
        if name == "slow":
            time.sleep(1)
            return self._send(200, [])
        if name == "broken":
            return self._send(500, {"error": "boom"})
        if name == "notjson":
            return self._send(200, None, raw=b"<html>")
        if name not in self.answers:
            return self._send(404, {"error": "unknown"})
        return self._send(200, self.answers[name])

    def _send(self, status: int, body: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client timed out (the slow user)
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass

    seen: list[tuple[str, str | None]] = []


@pytest.fixture(scope="module")
def portal() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/users/{{username}}/proposals"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    return str(path)


def test_http_source_reads_the_portal_with_the_token(portal, token_file):
    source = HTTPSource(url=portal, token_file=token_file)
    Portal.seen.clear()
    assert source.experiments("alice", []) == ["mx-1", "xfm-2", "../etc"]
    assert Portal.seen == [("/api/users/alice/proposals", "Bearer s3cret")]
    assert source.experiments("bob", []) == []


def test_http_source_unknown_user_has_no_experiments(portal, token_file):
    assert HTTPSource(url=portal, token_file=token_file).experiments("nobody", []) == []


@pytest.mark.parametrize(
    "user, message",
    [("broken", "HTTP 500"), ("notjson", "did not answer JSON"), ("slow", "failed")],
)
def test_http_source_failures_are_source_errors(portal, token_file, user, message):
    source = HTTPSource(url=portal, token_file=token_file, timeout=0.3)
    with pytest.raises(SourceError, match=message):
        source.experiments(user, [])


def test_http_source_wrong_token_and_missing_token_file(portal, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    with pytest.raises(SourceError, match="HTTP 401"):
        HTTPSource(url=portal, token_file=str(wrong)).experiments("alice", [])
    with pytest.raises(SourceError, match="cannot read token file"):
        HTTPSource(url=portal, token_file=str(tmp_path / "none")).experiments("alice", [])


def test_http_source_unreachable_portal():
    source = HTTPSource(url="http://127.0.0.1:9/{username}", timeout=1)
    with pytest.raises(SourceError, match="failed"):
        source.experiments("alice", [])
