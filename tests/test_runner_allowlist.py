"""The flow parameter ``runner`` chooses among names; scheduler addresses live in the
deployment's configuration (WITH_SENSE_DASK_SCHEDULERS), and anything else is refused
before a connection is made.  The command line may still take an address."""

from __future__ import annotations

import re
import socket

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from flows.reindex import main, reindex
from tasks import distributed


@pytest.fixture
def listener():
    """A local TCP port that records whether anything connected to it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    s.setblocking(False)
    yield s
    s.close()


def connected(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.fixture
def schedulers(monkeypatch, listener):
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv(distributed.SCHEDULERS_ENV, f"lab={address}, night-cluster=tls://10.1.2.3:8786")
    monkeypatch.setattr(distributed, "_SHELL_SCHEDULERS", {})
    return address


BAD_FORM_VALUES = ["tcp://{addr}", "tls://{addr}", "evil", "LAB", "lab ", "local;rm", "", "x" * 100,
                   "ws://{addr}", "inproc://x"]


@pytest.mark.parametrize("value", BAD_FORM_VALUES)
def test_a_form_value_that_is_not_a_configured_name_is_refused_without_connecting(schedulers, listener, value):
    value = value.format(addr=schedulers.removeprefix("tcp://"))
    with pytest.raises(ParameterTypeError, match="runner"):
        reindex.validate_parameters({"runner": value})
    with pytest.raises(ValueError):
        distributed.task_runner(value)
    assert not connected(listener)


@pytest.mark.parametrize("name", ["local", "dask", "lab", "night-cluster"])
def test_local_dask_and_configured_names_are_accepted(schedulers, name):
    assert reindex.validate_parameters({"runner": name})["runner"] == name


def test_a_configured_name_stands_for_its_address(schedulers):
    assert distributed.scheduler_address("lab") == schedulers
    assert distributed.scheduler_address("night-cluster") == "tls://10.1.2.3:8786"
    assert distributed.scheduler_address("local") is None


def test_the_run_form_schema_allows_names_only():
    pattern = parameter_schema(reindex.fn).model_dump()["properties"]["runner"]["pattern"]
    assert re.fullmatch(pattern, "lab") and re.fullmatch(pattern, "dask")
    assert not re.search(pattern, "tcp://10.0.0.5:8786")


@pytest.mark.parametrize("env", ["lab", "lab=http://x:1", "local=tcp://x:1", "Lab=tcp://x:1", "lab=tcp://x"])
def test_a_malformed_configuration_entry_is_an_error(monkeypatch, env):
    monkeypatch.setenv(distributed.SCHEDULERS_ENV, env)
    with pytest.raises(ValueError, match=distributed.SCHEDULERS_ENV):
        distributed.configured_schedulers()


def test_the_command_line_may_give_an_address(monkeypatch, listener):
    monkeypatch.setattr(distributed, "_SHELL_SCHEDULERS", {})
    monkeypatch.delenv(distributed.SCHEDULERS_ENV, raising=False)
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    # The shell's address reaches the flow as the name 'shell', which the flow then accepts.
    assert distributed.check_runner(address) == "shell"
    assert reindex.validate_parameters({"runner": "shell"})["runner"] == "shell"
    assert distributed.scheduler_address("shell") == address
    assert not connected(listener)


def test_the_command_line_refuses_an_unknown_name(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "_SHELL_SCHEDULERS", {})
    monkeypatch.delenv(distributed.SCHEDULERS_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--runner", "nowhere"])
    assert exc.value.code == 2 and "--runner" in capsys.readouterr().err
