"""The launchers' ports: from FEDINTENT_PORT_RANGE when it is set, never one handed out twice."""

import socket

import pytest

from fedintent.launch.processes import PORT_RANGE_VARIABLE, free_port


def test_ports_come_from_the_range_and_are_never_handed_out_twice(monkeypatch):
    monkeypatch.setenv(PORT_RANGE_VARIABLE, "29990-29999")
    ports = [free_port() for _ in range(5)]
    assert all(29990 <= port <= 29999 for port in ports)
    assert len(set(ports)) == 5


def test_a_range_whose_only_port_is_taken_says_so(monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setenv(PORT_RANGE_VARIABLE, f"{taken}-{taken}")
        with pytest.raises(OSError, match=PORT_RANGE_VARIABLE):
            free_port()


@pytest.mark.parametrize("span", ["20000", "b-c", "30000-20000", "80-90", "60000-70000"])
def test_a_malformed_range_is_named(monkeypatch, span):
    monkeypatch.setenv(PORT_RANGE_VARIABLE, span)
    with pytest.raises(ValueError, match=PORT_RANGE_VARIABLE):
        free_port()


def test_without_the_variable_the_kernel_picks_an_ephemeral_port(monkeypatch):
    monkeypatch.delenv(PORT_RANGE_VARIABLE, raising=False)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
