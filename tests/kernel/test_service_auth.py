"""Service tokens: scopes, secrets from files, the loopback-or-token rule, global options."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.service_auth import BearerCheck, auth_header, guard_exposure, is_loopback
from infermeter.kernel.settings import Config, load_config, section

LOG = logging.getLogger("test")


def test_a_scope_matches_only_its_tokens_and_never_raises() -> None:
    scope = BearerCheck("ingest", "tok-1", "", "tok-2")
    assert not scope.open
    assert scope.allows("Bearer tok-1") and scope.allows("bearer  tok-2 ")
    for bad in (None, "", "Bearer", "Bearer tok-3", "Basic tok-1", "Bearer çà", "Bearer \udcff"):
        assert not scope.allows(bad), bad
    assert BearerCheck("read").open and BearerCheck("read", "").allows(None)
    assert auth_header("t") == {"Authorization": "Bearer t"} and auth_header("") == {}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
     ("10.0.0.7", False), ("metering.svc", False)],
)  # fmt: skip
def test_loopback_is_what_only_this_box_reaches(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_scope_off_loopback_refuses_unless_insecure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scopes = {"ingest_token": "", "read_token": "r"}
    assert guard_exposure("metering", "127.0.0.1", scopes, insecure=False, log=LOG) == [
        "ingest_token"
    ]
    with pytest.raises(ConfigError, match=r"metering would listen on 0\.0\.0\.0") as err:
        guard_exposure("metering", "0.0.0.0", scopes, insecure=False, log=LOG)
    assert err.value.field == "metering.ingest_token"
    with caplog.at_level(logging.WARNING):
        guard_exposure("metering", "0.0.0.0", scopes, insecure=True, log=LOG)
    assert "INSECURE" in caplog.text and "ingest_token" in caplog.text
    assert guard_exposure("metering", "0.0.0.0", {"ingest_token": "i"}, insecure=False,
                          log=LOG) == []  # fmt: skip


class Table(BaseModel):
    model_config = {"extra": "forbid"}
    api_token: str = ""
    port: int = 1


def test_a_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-secret-mount\n")
    config = Config({"t": {"api_token_file": str(secret)}}, source="x.toml")
    assert section(config, "t", Table).api_token == "from-a-secret-mount"
    env = {"INFERMETER__T__API_TOKEN_FILE": str(secret)}
    assert section(load_config(None, env), "t", Table).api_token == "from-a-secret-mount"
    env = {"INFERMETER__T__API_TOKEN": "from-env"}
    assert section(load_config(None, env), "t", Table).api_token == "from-env"
    missing = Config({"t": {"api_token_file": str(tmp_path / "absent")}}, source="x.toml")
    with pytest.raises(ConfigError, match="cannot read") as err:
        section(missing, "t", Table)
    assert err.value.field == "t.api_token_file"
    with pytest.raises(ConfigError):  # only string fields have a *_file form
        section(Config({"t": {"port_file": str(secret)}}), "t", Table)


def infermeter(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER")}
    return subprocess.run(
        [sys.executable, "-m", "infermeter", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_are_honoured_before_or_after_the_subcommand(
    tmp_path: Path, where: str
) -> None:
    conf = tmp_path / "exposed.toml"
    conf.write_text('[metering]\nhost = "0.0.0.0"\nstorage = "duckdb:///:memory:"\n')
    args = ["--config", str(conf), "metering", "serve"]
    if where == "after":
        args = ["metering", "serve", "--config", str(conf)]
    done = infermeter(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "metering would listen on 0.0.0.0" in done.stderr  # the file was read
    missing = infermeter("--config", str(tmp_path / "nope.toml"), "metering", "serve",
                         cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_the_throttle_refuses_to_serve_open_off_loopback(tmp_path: Path) -> None:
    done = infermeter("throttle", "serve", "--host", "0.0.0.0", cwd=tmp_path)
    assert done.returncode == 2 and "throttle would listen on 0.0.0.0" in done.stderr
    assert "api_token" in done.stderr
