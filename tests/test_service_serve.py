import hashlib
import http.client

import pytest
import requests

from service.repository import Repository
from service.serve import RepositoryServer

from repo_fixtures import serving

OBJECT = bytes(range(256)) * 40                   # 10240 bytes
SHA = hashlib.sha256(OBJECT).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    repo = Repository.create(root)
    repo.write_object(f"patches/{SHA}.lc0patch", OBJECT)
    (root / "timestamp.json").write_bytes(b'{"signed": "timestamp"}\n')
    (root / ".state" / "secret").write_bytes(b"private")
    (root.parent / "outside.txt").write_bytes(b"outside")
    with serving(root) as srv:
        yield srv


def url(server, path):
    return server.url.rstrip("/") + path


def test_object_is_served_with_its_hash_as_etag_and_cached_forever(server):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"))
    assert r.status_code == 200 and r.content == OBJECT
    assert r.headers["ETag"] == f'"{SHA}"'
    assert "immutable" in r.headers["Cache-Control"] and "max-age=31536000" in r.headers["Cache-Control"]
    assert r.headers["Accept-Ranges"] == "bytes"


def test_top_document_is_revalidated_and_has_its_own_etag(server):
    r = requests.get(url(server, "/timestamp.json"))
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["ETag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    again = requests.get(url(server, "/timestamp.json"), headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""


def test_if_none_match_on_object(server):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"), headers={"If-None-Match": f'"{SHA}"'})
    assert r.status_code == 304


@pytest.mark.parametrize("header,start,end", [
    ("bytes=100-", 100, 10239), ("bytes=0-9", 0, 9), ("bytes=-16", 10224, 10239),
    ("bytes=10000-99999", 10000, 10239)])
def test_single_ranges_give_206(server, header, start, end):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"), headers={"Range": header})
    assert r.status_code == 206
    assert r.content == OBJECT[start:end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(OBJECT)}"


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_range_gives_416(server, header):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"), headers={"Range": header})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(OBJECT)}"


def test_if_range_with_another_validator_sends_the_whole_object(server):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"),
                     headers={"Range": "bytes=100-", "If-Range": '"somethingelse"'})
    assert r.status_code == 200 and r.content == OBJECT
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"),
                     headers={"Range": "bytes=100-", "If-Range": f'"{SHA}"'})
    assert r.status_code == 206 and r.content == OBJECT[100:]


def test_multiple_ranges_fall_back_to_the_whole_object(server):
    r = requests.get(url(server, f"/patches/{SHA}.lc0patch"), headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == OBJECT


def test_head_sends_headers_only(server):
    r = requests.head(url(server, f"/patches/{SHA}.lc0patch"))
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(OBJECT)) and r.content == b""


@pytest.mark.parametrize("path", [
    "/", "/patches", "/patches/", "/../outside.txt", "/patches/../../outside.txt",
    "/%2e%2e/outside.txt", "/patches/%2e%2e/%2e%2e/outside.txt", "/.state/secret", "/.state/lock",
    "/patches/missing.lc0patch", "//etc/passwd", "/patches/%2fetc%2fpasswd"])
def test_no_traversal_no_listing_no_hidden_files(server, path):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", path)           # sent as is, not normalised by a client library
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 404, (path, body[:80])
    assert b"outside" not in body and b"private" not in body


def test_server_url_reports_the_bound_port(tmp_path):
    with RepositoryServer(tmp_path) as srv:
        assert srv.server_address[1] > 0 and srv.url.endswith(f":{srv.server_address[1]}/")
