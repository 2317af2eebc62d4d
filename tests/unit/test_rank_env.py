"""torchrun's environment for a rank, and a fresh rendezvous port per incarnation."""

from __future__ import annotations

import os
import socket

import pytest

from supervisor.core.exec_env import exec_environment, rank_env
from supervisor.core.rendezvous import MASTER_ADDR, free_port


def test_rank_env_is_torchruns_contract() -> None:
    env = rank_env(2, 4, 29511)
    assert env["RANK"] == env["LOCAL_RANK"] == "2"
    assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == "4"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29511")
    with pytest.raises(ValueError, match="outside a world of 4"):
        rank_env(4, 4, 29511)


def test_free_ports_are_fresh_and_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)  # never the same one twice in a row
    with socket.socket() as sock:
        sock.bind((MASTER_ADDR, ports[-1]))  # free when handed out


def test_exec_environment_is_put_back() -> None:
    os.environ["RANK"] = "keep"
    os.environ.pop("WORLD_SIZE", None)
    try:
        with exec_environment({"RANK": "1", "WORLD_SIZE": "2"}):
            assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("1", "2")
        assert os.environ["RANK"] == "keep"
        assert "WORLD_SIZE" not in os.environ
    finally:
        os.environ.pop("RANK", None)
