"""Real nginx (Debian package) with the shipped auth_request config, on loopback.

nginx → throttle ``/v1/check`` (deny as 403) → ``error_page`` → 429 with Retry-After and
the RateLimit fields; allowed requests reach a real upstream server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from infermeter.kernel.tenancy import TenantResolver, hash_key
from infermeter.throttle.app import Runtime, create_app
from infermeter.throttle.nginx import render
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.settings import ThrottleSettings
from tests.conftest import ServerThread, free_port

POLICY = """
default_tier = "small"
check_max_tokens = 100
[tiers.small]
rate = 0.06            # 0.001 usd/s
per_s = 60
burst = 0.003          # three requests of 0.001 usd at once
[tiers.big]
rate = 600
per_s = 60
burst = 100
[tenants.bob]
tier = "big"
[models."*"]
prompt = 0.0
completion = 1.0e-5    # 100 completion tokens = 0.001 usd
"""
KEYS = {"sk-alice": "alice", "sk-bob": "bob"}
TOKEN = "nginx-decisions-token"  # the throttle's [throttle] api_token


def upstream_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, object]:
        await request.body()
        return {
            "object": "chat.completion",
            "tenant": request.headers.get("x-infermeter-throttle-tenant", ""),
        }

    return app


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """nginx in front of an upstream, asking a throttle whose decisions need ``TOKEN``;
    the nginx config carries the token given as the fixture's param (default ``TOKEN``)."""
    nginx_token = getattr(request, "param", TOKEN)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx not installed: run ./dev.sh test (apt package nginx)")
    resolver = TenantResolver.from_config(
        "", {hash_key(k): {"tenant": t} for k, t in KEYS.items()}, "anonymous"
    )
    runtime = Runtime(ThrottleSettings(api_token=TOKEN), resolver, policy=load_policy_text(POLICY))
    with (
        ServerThread(create_app(runtime, background=False)) as throttle,
        ServerThread(upstream_app()) as upstream,
    ):
        port = free_port()
        server = render(
            listen=f"127.0.0.1:{port}",
            throttle=f"127.0.0.1:{throttle.port}",
            upstream=f"127.0.0.1:{upstream.port}",
            token=nginx_token,
        )
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (tmp_path / sub).mkdir()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{server}
}}
"""
        )
        test = subprocess.run(
            [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
        )
        assert test.returncode == 0, test.stderr
        proc = subprocess.Popen(
            [nginx, "-p", str(tmp_path), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while True:
                try:
                    httpx.get(url, timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def test_tenant_over_its_limit_gets_429_with_retry_after_another_passes(stack: str) -> None:
    passed = [chat(stack, "sk-alice") for _ in range(3)]
    assert [r.status_code for r in passed] == [200, 200, 200]
    assert passed[0].json()["tenant"] == "alice"  # reached the real upstream
    assert passed[0].headers["ratelimit-policy"].startswith('"burst";q=3000;w=3')
    over = chat(stack, "sk-alice")
    assert over.status_code == 429, over.text
    assert int(over.headers["retry-after"]) >= 1
    assert over.headers["ratelimit"].startswith('"burst";r=0;t=')
    assert over.headers["ratelimit-policy"].startswith('"burst";q=3000')
    assert over.json()["error"]["code"] == 429 and "rate" in over.json()["error"]["message"]
    other = [chat(stack, "sk-bob") for _ in range(5)]
    assert [r.status_code for r in other] == [200] * 5
    assert other[0].json()["tenant"] == "bob"


@pytest.mark.parametrize("stack", ["wrong-token", ""], indirect=True)
def test_a_config_without_the_throttle_token_is_refused_not_let_through(stack: str) -> None:
    refused = chat(stack, "sk-alice")
    assert refused.status_code == 401, refused.text  # auth_request passes the throttle's 401


def test_the_token_cannot_break_out_of_the_nginx_string() -> None:
    with pytest.raises(ValueError, match="nginx string"):
        render("8088", "127.0.0.1:8300", "127.0.0.1:8080", token='x"; return 200; #')
