"""Actions: the registry, the targets file, and each backend against a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import REPO
from test_actions_kubernetes import settings as kube_settings
from typer.testing import CliRunner

from engine.actions import (
    ActionContext,
    ActionResult,
    TargetsConfig,
    available_actions,
    execute,
    get_action,
    load_targets,
    register_action,
)
from engine.errors import ActionError, SpecError
from engine.policy.commands import register


class Recorder:
    """A tiny HTTP server that records every request and answers from a routing table."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = recorder.routes.get((self.command, self.path), (200, {"ok": True}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


def header(request: dict[str, Any], name: str) -> str | None:
    return {k.lower(): v for k, v in request["headers"].items()}.get(name.lower())


WHEN = datetime(2026, 11, 27, 3, 4, 5)


def test_builtins_register_like_plugins_and_list() -> None:
    actions = available_actions()
    assert {
        "restart",
        "scale",
        "shift_traffic",
        "refresh_index",
        "rollback_model",
        "webhook",
        "command",
    } <= set(actions)
    assert actions["rollback_model"].risk == "high" and actions["scale"].inverse == "scale"
    assert all(
        a.module == "engine.actions.builtin" for n, a in actions.items() if n in {"restart", "webhook"}
    )
    with pytest.raises(ActionError, match="unknown action 'restat'") as info:
        get_action("restat")
    assert info.value.hint == "did you mean 'restart'?"


def test_a_third_party_action_registers_and_binds() -> None:
    @register_action("drain_queue_test", risk="low", description="Drain a queue (test plugin).")
    def drain(ctx: ActionContext, queue: str, max_items: int = 100) -> ActionResult:
        return ActionResult(
            "drain_queue_test", ctx.service, "local", ctx.idempotency_key, {"q": queue, "n": max_items}
        )

    spec = get_action("drain_queue_test")
    assert spec.signature_text() == "drain_queue_test(queue: str, max_items: int = 100)"
    assert spec.bind_problems({"queue": "q", "max_item": 3}, skip_values=set())[0][1].startswith(
        "'max_item' is not a parameter of drain_queue_test (did you mean 'max_items'?)"
    )
    result = execute("drain_queue_test", {"queue": "jobs", "max_items": "7"}, "gateway", "key-1")
    assert result.detail == {"q": "jobs", "n": 7}
    with pytest.raises(ActionError, match="max_items"):
        execute("drain_queue_test", {"queue": "jobs", "max_items": "lots"}, "gateway", "key-2")


def test_simulator_backend_follows_the_admin_contract(recorder: Recorder) -> None:
    settings = TargetsConfig.model_validate(
        {"defaults": {"backend": "simulator", "simulator": {"url": recorder.url}}}
    )
    recorder.routes[("POST", "/admin/inference-a/scale")] = (200, {"ok": True, "previous": 4, "replicas": 5})
    result = execute("scale", {"delta": 1}, "inference-a", "dec-42", settings=settings)
    (req,) = recorder.requests
    assert (req["method"], req["path"], req["body"]) == ("POST", "/admin/inference-a/scale", {"delta": 1})
    assert header(req, "Idempotency-Key") == "dec-42"
    assert result.inverse_params == {"replicas": 4} and result.backend == "simulator"
    execute("rollback_model", {}, "inference-b", "dec-43", settings=settings)
    execute("refresh_index", {"index": "main"}, "vector-db", "dec-44", settings=settings)
    execute("shift_traffic", {"weights": {"a": 0, "b": 1}}, "gateway", "dec-45", settings=settings)
    assert [(r["path"], r["body"]) for r in recorder.requests[1:]] == [
        ("/admin/inference-b/rollback_model", {"version": None}),
        ("/admin/vector-db/refresh_index", {"index": "main"}),
        ("/admin/gateway/shift_traffic", {"weights": {"a": 0.0, "b": 1.0}}),
    ]


def test_http_backend_posts_to_the_admin_endpoint_and_errors_are_action_errors(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    settings = TargetsConfig.model_validate(
        {
            "services": {
                "vector-db": {
                    "backend": "http",
                    "http": {
                        "url": f"{recorder.url}/admin/",
                        "token_env": "ADMIN_TOKEN",
                        "headers": {"X-Team": "retrieval"},
                    },
                }
            }
        }
    )
    execute("restart", {}, "vector-db", "k-1", settings=settings)
    (req,) = recorder.requests
    assert (req["method"], req["path"], req["body"]) == ("POST", "/admin/restart", {})
    assert header(req, "Authorization") == "Bearer s3cret" and header(req, "X-Team") == "retrieval"
    recorder.routes[("POST", "/admin/restart")] = (503, {"error": "busy"})
    with pytest.raises(ActionError, match="answered 503") as info:
        execute("restart", {}, "vector-db", "k-2", settings=settings)
    assert "not known to deduplicate by Idempotency-Key" in (info.value.hint or "")
    dedup = TargetsConfig.model_validate(
        {
            "services": {
                "vector-db": {"backend": "http", "http": {"url": f"{recorder.url}/admin/", "dedup": True}}
            }
        }
    )
    with pytest.raises(ActionError, match="answered 503") as info:
        execute("restart", {}, "vector-db", "k-2", settings=dedup)
    assert "same idempotency key is safe" in (info.value.hint or "")
    closed = TargetsConfig.model_validate(
        {"services": {"x": {"backend": "http", "http": {"url": "http://127.0.0.1:9"}}}}
    )
    with pytest.raises(ActionError, match="failed"):
        execute("restart", {}, "x", "k-3", settings=closed)


def test_kubernetes_rollout_restart_is_the_kubectl_patch(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_TOKEN", "tok")
    targets = kube_settings(recorder.url, token_env="KUBE_TOKEN")
    execute("restart", {}, "inference-a", "d-1", settings=targets, requested_at=WHEN)
    execute("restart", {}, "inference-a", "d-1", settings=targets, requested_at=WHEN)
    first, retry = recorder.requests
    assert first["method"] == "PATCH"
    assert first["path"] == "/apis/apps/v1/namespaces/ai/deployments/inference-a"
    assert header(first, "Content-Type") == "application/strategic-merge-patch+json"
    assert header(first, "Authorization") == "Bearer tok" and header(first, "Idempotency-Key") == "d-1"
    assert first["body"] == {
        "spec": {
            "template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T03:04:05Z"}}
            }
        }
    }
    assert retry["body"] == first["body"]  # a retry is the same patch: no second rollout


# scale and rollback_model on kubernetes: tests/test_actions_kubernetes.py (a stateful fake API server)


def test_webhook_posts_json_with_the_key(recorder: Recorder) -> None:
    execute("webhook", {"url": f"{recorder.url}/hook", "payload": {"text": "paged"}}, "gateway", "w-1")
    (req,) = recorder.requests
    assert req["body"] == {"service": "gateway", "text": "paged"} and header(req, "Idempotency-Key") == "w-1"


def test_command_runs_only_allowlisted_argv(tmp_path: Path) -> None:
    settings = TargetsConfig.model_validate({"commands": {"allow": [sys.executable]}})
    out = tmp_path / "out.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['SELFHEAL_IDEMPOTENCY_KEY'])"
    execute("command", {"argv": [sys.executable, "-c", code]}, "gateway", "c-1", settings=settings)
    assert out.read_text() == "c-1"
    with pytest.raises(ActionError, match="argv"):
        execute(
            "command", {"argv": "rm -rf /tmp/x"}, "gateway", "c-2", settings=settings
        )  # never a shell string
    with pytest.raises(ActionError, match=r"not in commands\.allow"):
        execute("command", {"argv": ["/bin/sh", "-c", "true"]}, "gateway", "c-3", settings=settings)
    with pytest.raises(ActionError, match="exited 3"):
        execute(
            "command",
            {"argv": [sys.executable, "-c", "raise SystemExit(3)"]},
            "gateway",
            "c-4",
            settings=settings,
        )


def test_the_callers_timeout_caps_the_targets_own(tmp_path: Path) -> None:
    """The engine's ``action_timeout_s`` reaches the request and the program: a target whose own
    timeout is 30 s cannot hold the call longer than the caller allows."""
    import socket
    import time

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = TargetsConfig.model_validate(
            {
                "services": {"x": {"backend": "http", "http": {"url": url, "timeout_s": 30}}},
                "commands": {"allow": [sys.executable]},
            }
        )
        started = time.monotonic()
        with pytest.raises(ActionError, match=r"timed out|failed"):
            execute("restart", {}, "x", "t-1", settings=settings, timeout_s=0.3)
        assert time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(ActionError, match="failed to run"):
        sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
        execute("command", {"argv": sleep, "timeout_s": 30}, "x", "t-2", settings=settings, timeout_s=0.3)
    assert time.monotonic() - started < 5


def test_execute_requires_an_idempotency_key() -> None:
    with pytest.raises(ActionError, match="idempotency key"):
        execute("restart", {}, "gateway", "")


def test_targets_file(tmp_path: Path) -> None:
    shipped = load_targets(REPO / "rules" / "targets.yaml")
    assert shipped.target("inference-a").backend == "simulator"
    bad = tmp_path / "targets.yaml"
    bad.write_text(
        "defaults: {backend: simulator}\nservices:\n  a: {backend: kubernets}\n  b: {backend: kubernetes}\n"
    )
    with pytest.raises(SpecError) as info:
        load_targets(bad)
    lines = [str(p) for p in info.value.problems]
    assert any("services.a.backend" in x and "kubernets" in x for x in lines), lines


def test_actions_list_command() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["actions", "list"])
    assert result.exit_code == 0
    assert "scale(replicas: int | None = None, delta: int | None = None)" in result.stdout
    assert "risk high; inverse rollback_model" in result.stdout
    as_json = json.loads(CliRunner().invoke(app, ["actions", "list", "--json"]).stdout)
    assert as_json["command"]["params"]["properties"]["argv"]["type"] == "array"
