"""Hostile input an outside tester would try: other scripts' digits, deep JSON, tokens in the database, YAML alias
bombs, sizes the machine cannot hold, duplicate keys, absurd user counts.  Each is refused clearly and loses nothing."""

from __future__ import annotations

import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest

from capacity_cli import main

from .conftest import SCENARIOS
from .refserver_helpers import config, make_client, person

SMOKE = SCENARIOS / "smoke.yaml"


@pytest.mark.parametrize(
    "field, spelling",
    [
        ("nik", "٣٢٧٣٠١٢١٠٤٩٠٠٠٠١"),  # Arabic-Indic
        ("nik", "３２７３０１２１０４９００００１"),  # fullwidth
        ("nik", "³²⁷³⁰¹²¹⁰⁴⁹⁰⁰⁰⁰¹"),  # superscript (was a 500: int('³¹'))
        ("phone", "+६२८१२३४५६७८९०"),  # Devanagari
    ],
)
def test_only_ascii_digits_count_so_one_nik_registers_once(tmp_path: Path, field: str, spelling: str) -> None:
    with make_client(tmp_path) as client:
        r = client.post("/api/register", json=person(**{field: spelling}))
        assert r.status_code == 422 and "digits (0-9)" in r.json()["error"]


def test_deeply_nested_json_gets_a_400_in_the_error_shape(tmp_path: Path) -> None:
    body = "[" * 8000 + "]" * 8000  # 16 KB, under the size cap
    with make_client(tmp_path) as client:
        r = client.post("/api/register", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json() == {"error": "JSON nested too deeply"}
        assert client.get("/healthz").status_code == 200


def test_the_verification_token_is_kept_in_clear_only_in_test_mode(tmp_path: Path) -> None:
    for mode in (False, True):
        folder = tmp_path / f"test-mode-{mode}"
        with make_client(folder, config(test_mode=mode)) as client:
            assert client.post("/api/register", json=person()).status_code == 201
        with sqlite3.connect(folder / "db.sqlite") as db:
            tokens = [row[0] for row in db.execute("SELECT token FROM outbox")]
        assert len(tokens) == 1 and (tokens[0] != "") == mode


def _refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    tracemalloc.start()
    started = time.monotonic()
    code = main(["simulate", str(bad), "--out", str(tmp_path / "run"), "-q"])
    took, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not (tmp_path / "run").exists()
    assert peak < 200e6, f"{peak / 1e6:.0f} MB to refuse it"
    assert took < 30, f"{took:.0f}s to refuse it"  # a generous bound: what matters is that it never expands the input
    return err


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{x}: &{x} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, x in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize("where", ["description", "seed", "top"])
def test_a_yaml_alias_bomb_is_refused_without_expanding_it(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SMOKE.read_text()
    if where == "top":
        text = BOMB + text
    else:
        text = BOMB.replace("i: &i", f"{where}: &i").replace("\n", "\n", 1) + "\n".join(
            line for line in text.splitlines() if not line.startswith(f"{where}:")
        )
    err = _refused(tmp_path, text, capsys)
    assert "expands to more than" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (("horizon: 2m", "horizon: 1000000h"), "a scenario spans at most 31 days"),
        (("peak: 40/s", "peak: 1e12/s"), "arrivals in the horizon; the model holds at most"),
        (("payload: 100KB", "payload: 10GB"), "an upload is at most 20 MB"),
        (("seed: 42", "seed: 42\nseed: 43"), "duplicate key 'seed'"),
    ],
)
def test_sizes_the_machine_cannot_hold_and_duplicate_keys_are_refused(
    change: tuple[str, str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SMOKE.read_text()
    assert change[0] in text
    assert message in _refused(tmp_path, text.replace(change[0], change[1], 1), capsys)


@pytest.mark.parametrize("users", ["0", "-5"])
def test_loadtest_refuses_an_absurd_user_count_before_starting(users: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", str(SMOKE), "--users", users, "--out", str(tmp_path / "run")]) == 2
    assert "--users must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_large_body_is_refused_without_being_read(tmp_path: Path) -> None:
    # on a real server: a declared 100 MB JSON body gets its 413 before the body is sent; a chunked one after a few
    # chunks (the server stops reading past its 16 KB limit), where it used to read it all first
    import select
    import socket
    from urllib.parse import urlsplit

    from refserver.serve import started

    from .refserver_helpers import config

    def answer(sock: socket.socket) -> bytes:
        sock.settimeout(10)
        return sock.recv(4096)

    head = "POST /api/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with started(config().to_dict(), tmp_path / "server") as url:
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.sendall((head + "Content-Length: 100000000\r\n\r\n").encode() + b'{"name": "')
            assert answer(sock).startswith(b"HTTP/1.1 413")
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
            sent = 0
            while sent < 1600 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 1
            assert answer(sock).startswith(b"HTTP/1.1 413")
            assert sent < 100, f"{sent} chunks of 64 KB went in before the answer"


@pytest.mark.parametrize(
    "client, host, allowed",
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "localhost", True),
        ("testclient", "127.0.0.1", False),  # a name is not a loopback address
        ("10.0.0.5", "127.0.0.1", False),
        ("127.0.0.1", "rebound.example.org", False),  # a local browser sent here by a rebound DNS name
    ],
)
def test_the_test_mailbox_answers_only_loopback_clients_asking_for_a_loopback_host(
    tmp_path: Path, client: str, host: str, allowed: bool
) -> None:
    from starlette.testclient import TestClient

    with make_client(tmp_path) as local:
        rid = local.post("/api/register", json=person()).json()["id"]
        app = local.app
    with TestClient(app, base_url=f"http://{host}", client=(client, 40000)) as other:
        r = other.get(f"/test/mailbox/{rid}")
        assert (r.status_code != 403) == allowed, r.text
