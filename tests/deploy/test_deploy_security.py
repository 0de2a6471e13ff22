"""Where the internal token and the TLS files go under compose and Kubernetes.

docker-compose.tls.yml (an override) and k8s/security/internal-secret.yaml go
through the same validators as the other deployment files, their variables are
fields of the services' settings classes, and the files they name are the ones
`python -m splitgpt.shells.tls` writes.
"""

from __future__ import annotations

import yaml

from tests.deploy.test_deploy_files import (
    COMPOSE,
    K8S,
    ROOT,
    argv_of,
    check,
    check_service_env,
    compose_env,
    load_compose,
    python_tool,
)

TLS_OVERRIDE = ROOT / "docker-compose.tls.yml"
SECRET = K8S / "security" / "internal-secret.yaml"


def written_by_the_tls_tool(tmp_path) -> set[str]:
    from splitgpt.shells.tls import main

    main([str(tmp_path / "secrets"), "tokenizer"])
    return {p.name for p in (tmp_path / "secrets").iterdir()}


def test_the_tls_override_matches_the_compose_spec_schema():
    check(python_tool("check_jsonschema", "check-jsonschema") + ["--builtin-schema", "vendor.compose-spec", str(TLS_OVERRIDE)])


def test_the_tls_override_wires_every_grpc_service_and_the_gateway(monkeypatch, tmp_path):
    base, override = load_compose(COMPOSE)["services"], load_compose(TLS_OVERRIDE)
    nodes = {"node-0", "node-1", "node-2", "second-node-0", "second-node-1"}
    assert set(override["services"]) == {"tokenizer", *nodes, "coordinator", "api"}
    for name, service in override["services"].items():
        subcommand = argv_of(base[name]["command"])[0]
        env = {**compose_env(base[name]), **compose_env(service)}
        settings = check_service_env(f"compose tls {name}", subcommand, env, monkeypatch)
        assert settings.internal_token_file is not None and settings.tls_ca is not None, name
        if subcommand != "api":  # a server: mutual TLS
            assert settings.tls_cert and settings.tls_key and settings.tls_client_ca, name
        mounted = {f"/run/secrets/{s}" for s in service["secrets"]}
        named = {v for k, v in compose_env(service).items() if k.startswith("SPLITGPT_")}
        assert named <= mounted, f"{name}: {sorted(named - mounted)} are not mounted secrets"
        assert set(service["secrets"]) <= set(override["secrets"]), name
    files = {(ROOT / s["file"]).name for s in override["secrets"].values()}
    assert files == written_by_the_tls_tool(tmp_path)


def test_the_k8s_secret_passes_kubernetes_validate_strict(tmp_path):
    output = check(python_tool("kubernetes_validate", "kubernetes-validate") + ["--strict", str(SECRET)])
    assert "passed" in output and "ERROR" not in output and "WARN" not in output, output
    (secret,) = [d for d in yaml.safe_load_all(SECRET.read_text()) if d]
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == written_by_the_tls_tool(tmp_path)
