"""Every connection this service opens (outbound.py), against real local HTTP servers: the address
rule that keeps links someone else chose away from this machine and its network (every hop, and a
kept-alive connection too), the caps on an answer's size, and the deadline that cuts an upstream
dripping its answer a byte at a time, however slowly each byte comes."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

from core.errors import AddressRefused, TooLarge
from siliconflow.outbound import (
    AddressRule,
    address_rule,
    deadline,
    make_http,
    make_session,
    read_capped,
    refusal,
    remaining,
    requests_deadline,
)

DRIP_BYTES, DRIP_EVERY = 200, 0.05  # ten seconds of answer, every read well within its socket timeout


class Upstream(ThreadingHTTPServer):
    """A real HTTP server whose paths misbehave: `/small`, `/declared-big` (a Content-Length of
    10 MB), `/chunked-big` (2.5 MB without a length), `/redirect?to=URL`, `/drip-body` (headers,
    then a byte every DRIP_EVERY s), `/drip-head` (the status line itself a byte at a time)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.dripped = 0
        self.hits: list[str] = []
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that was cut off is the point of these tests


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, *args) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.server.stopping.wait(DRIP_EVERY):
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            self.server.dripped += 1

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        path = urlsplit(self.path).path
        if path == "/small":
            self._head(200, {"Content-Length": "1000"})
            self.wfile.write(b"s" * 1000)
        elif path == "/declared-big":
            self._head(200, {"Content-Length": str(10 * 2**20)})
            self.wfile.write(b"b" * 2**16)
        elif path == "/chunked-big":
            self._head(200, {"Transfer-Encoding": "chunked"})
            for _ in range(40):
                self.wfile.write(b"10000\r\n" + b"c" * 2**16 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/redirect":
            self._head(302, {"Location": parse_qs(urlsplit(self.path).query)["to"][0], "Content-Length": "0"})
        elif path == "/drip-body":
            self._head(200, {"Content-Length": str(DRIP_BYTES)})
            self._drip(b"d" * DRIP_BYTES)
        elif path == "/drip-head":
            self._drip(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * DRIP_BYTES + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def http():
    return make_http(4)


# --- the address rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.8", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link_local"),  # the cloud's metadata service
        ("fe80::1%eth0", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("0.0.0.0", "reserved"),
        ("224.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4 inside IPv6: where the connection really ends
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("not-an-address", "invalid"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_only_public_addresses_pass_the_rule(address, kind):
    assert refusal(address) == kind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_link_to_this_machine_is_refused_before_anything_is_sent(internal, host):
    url = internal.url("/secret").replace("127.0.0.1", host)
    with address_rule(AddressRule()), pytest.raises(AddressRefused) as refused:
        make_session(2).get(url, timeout=5)
    assert refused.value.reason.code == "address_refused" and refused.value.reason.get("place") == "loopback"
    assert internal.hits == []


def test_a_name_that_does_not_resolve_is_refused_as_such(http):
    with address_rule(AddressRule()), pytest.raises(AddressRefused) as refused:
        http.request("GET", "http://no-such-host.invalid/picture.png", timeout=5)
    assert refused.value.unresolved and refused.value.reason.code == "unresolved"


def test_the_operators_own_hosts_are_trusted_by_host_and_port_only(internal, upstream):
    """API_BASE_URL on this machine serves its pictures from there: that origin passes, and
    another port of the same machine still does not."""
    rule = AddressRule.trusting(internal.url("/"))
    with address_rule(rule):
        assert make_session(2).get(internal.url("/picture.png"), timeout=5).content.startswith(b"\x89PNG")
        with pytest.raises(AddressRefused):
            make_session(2).get(upstream.url("/small"), timeout=5)
    assert internal.hits == ["/picture.png"]


def test_allow_private_lifts_the_rule_for_a_lan(internal):
    with address_rule(AddressRule(allow_private=True)):
        assert make_session(2).get(internal.url("/lan.png"), timeout=5).status_code == 200
    assert internal.hits == ["/lan.png"]


def test_every_hop_of_a_redirect_is_held_to_the_rule(internal, upstream):
    """A trusted host that redirects to a private one does not take the request there."""
    rule = AddressRule.trusting(upstream.url("/"))
    with address_rule(rule), pytest.raises(AddressRefused):
        make_session(2).get(upstream.url(f"/redirect?to={internal.url('/inside.png')}"), timeout=5)
    assert internal.hits == []


def test_a_kept_alive_connection_made_for_the_operator_is_not_reused_for_a_stranger(http, upstream):
    """The JSON client reached the operator's host without a rule, and the connection stays open; a
    link someone else chose to the same host and port must not ride on it."""
    assert http.request("GET", upstream.url("/small?operator"), timeout=5).status == 200
    with address_rule(AddressRule()), pytest.raises(AddressRefused):
        http.request("GET", upstream.url("/small?stranger"), timeout=5)
    assert upstream.hits == ["/small?operator"]


# --- caps -----------------------------------------------------------------------------------------------


def test_an_answer_within_its_cap_is_read_whole(http, upstream):
    response = http.request("GET", upstream.url("/small"), preload_content=False, timeout=5)
    assert read_capped(response, 1000) == b"s" * 1000


@pytest.mark.parametrize("path", ["/declared-big", "/chunked-big"])
def test_an_answer_over_its_cap_is_refused_whether_or_not_it_says_its_length(http, upstream, path):
    response = http.request("GET", upstream.url(path), preload_content=False, timeout=5)
    with pytest.raises(TooLarge):
        read_capped(response, 2**20)
    assert http.request("GET", upstream.url("/small"), timeout=5).data == b"s" * 1000  # the client goes on


# --- deadlines --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip-body", "/drip-head"])
def test_an_upstream_dripping_its_answer_is_cut_at_the_deadline(http, upstream, path):
    """Each byte comes well within the socket's read timeout, so only the deadline can end the call:
    it is cut (the answer is never taken as whole) and the scope says why."""
    with deadline(time.monotonic() + 0.5) as scope:
        with pytest.raises((urllib3.exceptions.HTTPError, OSError)):
            response = http.request("GET", upstream.url(path), preload_content=False, timeout=urllib3.Timeout(5, 5))
            read_capped(response, 2**20)
    assert scope.expired and upstream.dripped < DRIP_BYTES


def test_a_call_through_requests_cut_at_its_deadline_is_a_timeout(upstream):
    with pytest.raises(requests.Timeout), requests_deadline(time.monotonic() + 0.5) as scope:
        make_session(2).get(upstream.url("/drip-body"), timeout=5)
    assert scope.expired


def test_a_call_that_answers_in_time_is_not_cut(http, upstream):
    with deadline(time.monotonic() + 30) as scope:
        response = http.request("GET", upstream.url("/small"), preload_content=False, timeout=5)
        assert read_capped(response, 2000) == b"s" * 1000
    assert not scope.expired


def test_a_call_whose_time_is_already_up_is_not_sent(http, internal):
    with deadline(time.monotonic() - 1) as scope, pytest.raises((urllib3.exceptions.HTTPError, OSError)):
        http.request("GET", internal.url("/late"), timeout=5)
    assert scope.expired and internal.hits == []


def test_a_socket_timeout_is_what_is_left_at_most_its_cap_and_never_zero():
    now = time.monotonic()
    assert remaining(now + 100, 10.0) == 10.0
    assert remaining(now + 5, 10.0) <= 5
    assert remaining(now - 5, 10.0) == 0.001  # zero would make the socket non-blocking, not late
