"""The kubernetes backend against a stateful fake API server on 127.0.0.1.

The fake keeps one Deployment, serves it and its ``/scale`` subresource, applies merge and
strategic-merge patches (dicts merged, ``containers`` merged by name), bumps ``resourceVersion`` on
every write and answers 409 when a patch carries a stale ``metadata.resourceVersion``, as the API
server does. ``fail_after_apply`` makes the next PATCH land and then answer 504, which is what a
client sees when a proxy times out after the write: the case a retry must survive.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine.actions import TargetsConfig, execute
from engine.errors import ActionError

BASE = "/apis/apps/v1/namespaces/ai/deployments/inference-a"
WHEN = datetime(2026, 11, 27, 3, 4, 5)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key == "containers" and isinstance(value, list):
            by_name = {c["name"]: c for c in into.setdefault("containers", [])}
            for container in value:
                by_name.setdefault(container["name"], {}).update(container)
            into["containers"] = list(by_name.values())
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class FakeApiServer:
    def __init__(self, replicas: int = 4, version: str = "v7") -> None:
        self.deployment: dict[str, Any] = {
            "metadata": {"name": "inference-a", "resourceVersion": "100", "annotations": {}},
            "spec": {
                "replicas": replicas,
                "template": {
                    "metadata": {"annotations": {"selfheal.io/model-version": version}},
                    "spec": {
                        "containers": [{"name": "server", "image": f"registry.example/inference:{version}"}]
                    },
                },
            },
        }
        self.requests: list[tuple[str, str, Any]] = []
        self.fail_after_apply = 0
        self.before_patch: Callable[[], None] | None = None
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, None))
                with fake.lock:
                    dep = copy.deepcopy(fake.deployment)
                if self.path == BASE:
                    self._reply(200, dep)
                elif self.path == BASE + "/scale":
                    self._reply(200, {"kind": "Scale", "spec": {"replicas": dep["spec"]["replicas"]}})
                else:
                    self._reply(404, {"error": "not found"})

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("PATCH", self.path, body))
                if fake.before_patch is not None:
                    hook, fake.before_patch = fake.before_patch, None
                    hook()
                with fake.lock:
                    dep = fake.deployment
                    wanted_rv = body.get("metadata", {}).get("resourceVersion")
                    if wanted_rv is not None and wanted_rv != dep["metadata"]["resourceVersion"]:
                        self._reply(409, {"reason": "Conflict"})
                        return
                    if self.path == BASE + "/scale":
                        dep["spec"]["replicas"] = body["spec"]["replicas"]
                    elif self.path == BASE:
                        patch = copy.deepcopy(body)
                        patch.get("metadata", {}).pop("resourceVersion", None)
                        _merge(dep, patch)
                    else:
                        self._reply(404, {"error": "not found"})
                        return
                    fake.bump()
                    result = copy.deepcopy(dep)
                if fake.fail_after_apply:
                    fake.fail_after_apply -= 1
                    self._reply(504, {"reason": "Timeout"})
                    return
                self._reply(200, result)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def bump(self) -> None:
        meta = self.deployment["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    @property
    def replicas(self) -> int:
        return int(self.deployment["spec"]["replicas"])

    @property
    def patches(self) -> list[tuple[str, Any]]:
        return [(path, body) for method, path, body in self.requests if method == "PATCH"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


def settings(url: str, **kubernetes: Any) -> TargetsConfig:
    """inference-a as a Deployment behind the API at ``url`` (more ``kubernetes:`` keys as kwargs)."""
    return TargetsConfig.model_validate(
        {
            "services": {
                "inference-a": {
                    "backend": "kubernetes",
                    "kubernetes": {
                        "api": url,
                        "namespace": "ai",
                        "deployment": "inference-a",
                        "container": "server",
                        "image": "registry.example/inference",
                        **kubernetes,
                    },
                }
            }
        }
    )


def test_scale_by_delta_writes_an_absolute_count_with_the_key_and_a_precondition(api: FakeApiServer) -> None:
    result = execute("scale", {"delta": 2}, "inference-a", "d-2", settings=settings(api.url))
    assert api.replicas == 6 and result.inverse_params == {"replicas": 4}
    ((path, body),) = api.patches
    assert path == BASE
    assert body["spec"] == {"replicas": 6}  # the delta was resolved once; the patch carries no delta
    assert body["metadata"]["resourceVersion"] == "100"
    notes = body["metadata"]["annotations"]
    assert notes["selfheal.io/idempotency-key"] == "d-2"
    assert (json.loads(notes["selfheal.io/previous"]), json.loads(notes["selfheal.io/target"])) == (4, 6)


def test_a_retried_scale_after_a_timeout_converges(api: FakeApiServer) -> None:
    api.fail_after_apply = 1  # the PATCH lands, the client sees 504
    with pytest.raises(ActionError, match="answered 504") as info:
        execute("scale", {"delta": 1}, "inference-a", "dec-7", settings=settings(api.url))
    assert "retrying with the same idempotency key is safe" in (info.value.hint or "")
    assert api.replicas == 5
    retry = execute("scale", {"delta": 1}, "inference-a", "dec-7", settings=settings(api.url))
    again = execute("scale", {"delta": 1}, "inference-a", "dec-7", settings=settings(api.url))
    assert api.replicas == 5  # not 6, not 7
    assert retry.detail["previous"] == again.detail["previous"] == 4
    assert retry.inverse_params == {"replicas": 4}  # a rollback restores 4, it is not a no-op
    assert len(api.patches) == 1
    other = execute("scale", {"delta": 1}, "inference-a", "dec-8", settings=settings(api.url))
    assert api.replicas == 6 and other.inverse_params == {"replicas": 5}  # a new key acts again


def test_a_concurrent_write_is_not_overwritten(api: FakeApiServer) -> None:
    def hpa_scales_first() -> None:
        with api.lock:
            api.deployment["spec"]["replicas"] = 8
            api.bump()

    api.before_patch = hpa_scales_first
    result = execute("scale", {"delta": 1}, "inference-a", "d-9", settings=settings(api.url))
    assert [b["metadata"]["resourceVersion"] for _, b in api.patches] == ["100", "101"]
    assert api.replicas == 9 and result.inverse_params == {"replicas": 8}


def test_rollback_patches_the_pod_template_once_per_key(api: FakeApiServer) -> None:
    api.fail_after_apply = 1
    with pytest.raises(ActionError, match="504"):
        execute("rollback_model", {"version": "v6"}, "inference-a", "d-3", settings=settings(api.url))
    result = execute("rollback_model", {"version": "v6"}, "inference-a", "d-3", settings=settings(api.url))
    assert result.inverse_params == {"version": "v7"}  # recorded at the first attempt, not "v6"
    ((path, body),) = api.patches
    assert path == BASE
    assert body["spec"] == {
        "template": {
            "metadata": {"annotations": {"selfheal.io/model-version": "v6"}},
            "spec": {"containers": [{"name": "server", "image": "registry.example/inference:v6"}]},
        }
    }
    assert body["metadata"]["annotations"]["selfheal.io/operation"] == "rollback_model"
    template = api.deployment["spec"]["template"]
    assert template["spec"]["containers"] == [{"name": "server", "image": "registry.example/inference:v6"}]
    with pytest.raises(ActionError, match="needs an explicit version"):
        execute("rollback_model", {}, "inference-a", "d-4", settings=settings(api.url))
    with pytest.raises(ActionError, match="kubernetes backend cannot refresh_index"):
        execute("refresh_index", {}, "inference-a", "d-5", settings=settings(api.url))


def test_a_refused_patch_does_not_claim_a_retry_helps(api: FakeApiServer) -> None:
    broken = TargetsConfig.model_validate(
        {
            "services": {
                "inference-a": {
                    "backend": "kubernetes",
                    "kubernetes": {"api": api.url, "namespace": "ai", "deployment": "missing"},
                }
            }
        }
    )
    with pytest.raises(ActionError, match="answered 404") as info:
        execute("scale", {"replicas": 3}, "inference-a", "d-6", settings=broken)
    assert "retrying it unchanged will not help" in (info.value.hint or "")


def test_restart_retry_sends_the_same_patch(api: FakeApiServer) -> None:
    for _ in range(2):
        execute("restart", {}, "inference-a", "r-1", settings=settings(api.url), requested_at=WHEN)
    first, second = api.patches
    assert first == second
    assert api.deployment["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ] == ("2026-11-27T03:04:05Z")
