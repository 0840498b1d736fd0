"""The deployment files (deploy/), checked offline: no Docker daemon, no cluster, no network.

- Kubernetes: the kustomize base and every overlay are rendered (a real kustomize when the
  machine has one, else tests/plugins/kustomize_render.py) and every object is validated against
  the Kubernetes JSON schemas that the `kubernetes-validate` package ships, in strict mode; then
  what the schemas cannot say: probes, resources, non-root, secrets and files, commands.
- Compose: deploy/compose.yaml against the Compose Specification's JSON schema, vendored as
  tests/data/compose-spec.json (from github.com/compose-spec/compose-spec, schema/compose-spec.json
  at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6; Apache License 2.0, (c) the Compose
  Specification authors), then its commands, secrets, health checks and proxy.
- The image: the Dockerfile's user and entry point, and entrypoint.sh (bash -n, its commands
  against scripts/run.py's, its command lines in its dry-run mode).
"""

import datetime
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.plugins.kustomize_render import (
    UnsupportedKustomization,
    real_kustomize,
    render,
    render_in_python,
    render_with,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ENTRYPOINT = DEPLOY / "container" / "entrypoint.sh"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

KUSTOMIZATIONS = sorted(str(path.parent.relative_to(KUBERNETES)) for path in KUBERNETES.glob("**/kustomization.yaml"))
OVERLAYS = [name for name in KUSTOMIZATIONS if name.startswith("overlays/")]
# The oldest Kubernetes these manifests aim at, and the newest the package knows.
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
PROCESS_PORTS = {"web": 8000, "gateway": 8080}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  (a container listens on its own network namespace)


# --- helpers --------------------------------------------------------------------------------


def run_entrypoint(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "GATEHOUSE_ENTRYPOINT_DRY_RUN": "1", **environment}
    return run_tool("bash", str(ENTRYPOINT), *arguments, env=env)


def run_tool(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)  # noqa: S603


@functools.cache
def entrypoint_commands() -> dict[str, set[str]]:
    listed = run_entrypoint("commands")
    assert listed.returncode == 0, listed.stderr
    commands: dict[str, set[str]] = {"process": set(), "one-shot": set()}
    for line in listed.stdout.splitlines():
        kind, name = line.split()
        commands[kind].add(name)
    return commands


def dry_run(*arguments: str, **environment: str) -> list[str]:
    result = run_entrypoint(*arguments, **environment)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@functools.cache
def make_run_module():
    """scripts/run.py, whose long_running_commands() and Celery helpers `make run` uses."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))  # its own imports (services, supervisor)
    spec = importlib.util.spec_from_file_location("make_run_under_test", ROOT / "scripts" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    if name not in _rendered:
        _rendered[name] = render(KUBERNETES / name)
    return _rendered[name]


def objects_of(name: str, kind: str) -> list[dict[str, Any]]:
    return [item for item in rendered(name) if item["kind"] == kind]


def workloads(name: str) -> list[dict[str, Any]]:
    return [item for item in rendered(name) if item["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def is_gatehouse(workload: dict[str, Any]) -> bool:
    return workload["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "gatehouse"


def gatehouse_containers(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (item, container)
        for item in workloads(name)
        if is_gatehouse(item)
        for container in pod_spec(item)["containers"]
    ]


def process_of(container: dict[str, Any]) -> str:
    return container["args"][0]


def deployment_running(name: str, process: str) -> dict[str, Any]:
    found = [
        item
        for item in objects_of(name, "Deployment")
        if is_gatehouse(item) and process_of(pod_spec(item)["containers"][0]) == process
    ]
    assert len(found) == 1, f"{name}: {len(found)} Deployments run {process}"
    return found[0]


def secret_examples(name: str) -> dict[str, dict[str, Any]]:
    """The example Secrets that apply to a kustomization: the base's, then its own."""
    secrets: dict[str, dict[str, Any]] = {}
    for folder in (KUBERNETES / "base", KUBERNETES / name):
        example = folder / "secret.example.yaml"
        if example.exists():
            for document in yaml.safe_load_all(example.read_text()):
                secrets[document["metadata"]["name"]] = document
    return secrets


def secret_keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """(the volume, the file's path inside it) for a path under one of the container's mounts."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"] + "/"):
            # A StatefulSet's volumeClaimTemplates are volumes of no listed kind.
            volume = volumes.get(mount["name"], {"name": mount["name"], "persistentVolumeClaim": {}})
            return volume, str(PurePosixPath(path).relative_to(mount["mountPath"]))
    return None


def secret_key_of(volume: dict[str, Any], relative: str) -> str:
    items = volume["secret"].get("items")
    if items is None:
        return relative
    by_path = {item["path"]: item["key"] for item in items}
    assert relative in by_path, f"{relative} is not among the items of {volume['name']}"
    return by_path[relative]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@functools.cache
def file_variables_the_code_reads(folders: tuple[str, ...]) -> set[str]:
    """NAME_FILE for every NAME read through env_secret / _secret, or as NAME_FILE directly."""
    names: set[str] = set()
    for folder in folders:
        for source in (ROOT / folder).glob("*.py"):
            text = source.read_text()
            names |= {f"{name}_FILE" for name in re.findall(r"(?:env_secret|_secret)\(\s*\"([A-Z0-9_]+)\"\s*\)", text)}
            names |= {f"{name}_FILE" for name in re.findall(r"environ\.get\(\s*\"([A-Z0-9_]+)_FILE\"", text)}
    return names


def file_variable_is_read(name: str, process: str) -> bool:
    folders = ("gateway",) if process == "gateway" else ("controlplane", "gateway")
    entrypoint = {f"{found}_FILE" for found in re.findall(r"^load_url_from_file (\w+)$", ENTRYPOINT.read_text(), re.M)}
    if re.fullmatch(r"GATEHOUSE_KEK_\d+_FILE", name) and process != "gateway":
        return "GATEHOUSE_KEK_(\\d+)(?:_FILE)?" in (ROOT / "controlplane" / "settings.py").read_text()
    return name in file_variables_the_code_reads(folders) | entrypoint


def undocumented(names: set[str]) -> set[str]:
    """Names neither README.md nor .env.example mention; NAME_FILE counts as NAME (README:
    "A secret may be given as NAME or as NAME_FILE")."""
    documented = (ROOT / "README.md").read_text() + (ROOT / ".env.example").read_text()
    return {
        name for name in names if f"`{name}" not in documented and f"`{name.removesuffix('_FILE')}" not in documented
    }


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_gatehouse_services() -> dict[str, dict[str, Any]]:
    image = compose()["x-gatehouse-image"]["image"]
    return {name: service for name, service in compose()["services"].items() if service.get("image") == image}


def compose_secret_names(service: dict[str, Any]) -> set[str]:
    return {entry if isinstance(entry, str) else entry["source"] for entry in service.get("secrets", [])}


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# --- the image: Dockerfile and entry point ----------------------------------------------------


def test_the_dockerfile_runs_as_a_non_root_user():
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert ("FROM", "python:3.11-slim-bookworm") in dockerfile_instructions()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_gatehouse_pods_run_as_the_image_user(name):
    # runAsNonRoot needs a numeric USER to verify; fsGroup must be its group to read the secrets.
    user, group = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"][-1].split(":")
    for item in workloads(name):
        if is_gatehouse(item):
            context = pod_spec(item)["securityContext"]
            ids = (context["runAsUser"], context["runAsGroup"], context["fsGroup"])
            assert ids == (int(user), int(group), int(group)), item["metadata"]["name"]


def test_the_dockerfile_enters_through_the_entrypoint_script():
    entrypoints = [json.loads(rest) for keyword, rest in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    workdir = [rest for keyword, rest in dockerfile_instructions() if keyword == "WORKDIR"][-1]
    assert entrypoints[-1] == [f"{workdir}/deploy/container/entrypoint.sh"]
    cmd = [json.loads(rest) for keyword, rest in dockerfile_instructions() if keyword == "CMD"][-1]
    assert cmd[0] in entrypoint_commands()["process"]


def test_the_dockerfile_installs_requirements_txt_only():
    steps = [
        " ".join(step.split())
        for keyword, rest in dockerfile_instructions()
        if keyword == "RUN"
        for step in rest.split("&&")
    ]
    assert [step for step in steps if "pip install" in step] == ["pip install --no-cache-dir -r requirements.txt"]
    assert any(step.endswith("python manage.py collectstatic --noinput") for step in steps)


def test_the_entrypoint_is_valid_bash():
    result = run_tool("bash", "-n", str(ENTRYPOINT))
    assert result.returncode == 0, result.stderr


def test_the_entrypoint_passes_shellcheck():
    result = run_tool("shellcheck", str(ENTRYPOINT))
    assert result.returncode == 0, result.stdout


def test_the_entrypoint_has_a_command_per_process_of_make_run():
    processes = set(make_run_module().long_running_commands())
    # The provider simulator is development's stand-in for the providers: never deployed.
    assert entrypoint_commands()["process"] == processes - {"simulator"}


@pytest.mark.parametrize(
    ("command", "environment", "expected"),
    [
        ("worker", {}, lambda run: run.celery_worker("celery", 2, "worker")),
        ("worker", {"CELERY_WORKER_CONCURRENCY": "6"}, lambda run: run.celery_worker("celery", 6, "worker")),
        ("publisher", {}, lambda run: run.celery_worker("publish", 1, "publisher")),
        ("publisher", {"GATEHOUSE_PUBLISH_QUEUE": "pub"}, lambda run: run.celery_worker("pub", 1, "publisher")),
        ("beat", {}, lambda run: run.celery_beat()),
    ],
)
def test_the_entrypoint_starts_celery_as_make_run_does(command, environment, expected):
    assert dry_run(command, **environment) == ["python", *expected(make_run_module())]


@pytest.mark.parametrize(
    ("command", "environment", "expected"),
    [
        ("web", {}, ["python", "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py", "controlplane.wsgi"]),
        ("ingest", {}, ["python", "manage.py", "ingest_usage"]),
        ("migrate", {}, ["python", "manage.py", "migrate", "--noinput"]),
        ("gateway", {}, ["python", "-m", "gateway", "--host", ALL_INTERFACES, "--port", "8080", "--workers", "1"]),
        (
            "gateway",
            {"GATEWAY_WORKERS": "4", "GATEWAY_PORT": "9000"},
            ["python", "-m", "gateway", "--host", ALL_INTERFACES, "--port", "9000", "--workers", "4"],
        ),
    ],
)
def test_the_entrypoint_command_lines(command, environment, expected):
    assert dry_run(command, **environment) == expected


def test_the_entrypoint_appends_arguments():
    assert dry_run("ingest", "--consumer", "ingest-7")[-2:] == ["--consumer", "ingest-7"]
    assert dry_run("manage", "publish_config", "--full") == ["python", "manage.py", "publish_config", "--full"]


def test_the_gunicorn_and_manage_files_it_names_exist():
    for command in ("web", "migrate"):
        assert all((ROOT / argument).exists() for argument in dry_run(command) if argument.endswith(".py"))


def test_the_entrypoint_refuses_an_unknown_command():
    result = run_entrypoint("runserver")
    assert result.returncode == 64
    assert "unknown command runserver" in result.stderr


def test_the_entrypoint_reads_database_url_from_a_file(tmp_path):
    (tmp_path / "database-url").write_text("postgresql://u:p@db/gatehouse\n")
    result = run_entrypoint("web", DATABASE_URL_FILE=str(tmp_path / "database-url"))
    assert result.returncode == 0
    assert "DATABASE_URL from DATABASE_URL_FILE" in result.stderr


def test_the_entrypoint_stops_on_an_unreadable_secret_file(tmp_path):
    result = run_entrypoint("web", DATABASE_URL_FILE=str(tmp_path / "missing"))
    assert result.returncode == 78
    assert "cannot read" in result.stderr


def test_the_entrypoint_does_not_export_the_broker_url():
    # Celery reads CELERY_BROKER_URL from the environment ahead of the settings, which translate
    # redis+sentinel:// for it: the settings must read GATEHOUSE_BROKER_URL_FILE themselves.
    assert not re.search(r"^load_url_from_file CELERY_BROKER_URL$", ENTRYPOINT.read_text(), re.M)


# --- Kubernetes ---------------------------------------------------------------------------------


def test_there_is_a_base_and_two_overlays():
    assert "base" in KUSTOMIZATIONS
    assert {"overlays/production", "overlays/single-node"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_matches_the_kubernetes_schema(name, version):
    failures = []
    for item in rendered(name):
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{item['kind']} {item['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not failures


def test_the_schema_validation_catches_a_misspelt_field():
    deployment = json.loads(json.dumps(objects_of("base", "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/readyz", "port": 8000}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.skipif(real_kustomize() is None, reason="no kustomize or kubectl on this machine")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_python_renderer_agrees_with_kustomize(name):
    def keyed(objects):
        return {(item["kind"], item["metadata"].get("namespace"), item["metadata"]["name"]): item for item in objects}

    assert keyed(render_in_python(KUBERNETES / name)) == keyed(render_with(real_kustomize(), KUBERNETES / name))


def test_the_python_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: staging-\n")
    with pytest.raises(UnsupportedKustomization, match="namePrefix"):
        render_in_python(tmp_path)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_namespaced_object_is_in_the_gatehouse_namespace(name):
    namespaces = {item["metadata"].get("namespace") for item in rendered(name) if item["kind"] != "Namespace"}
    assert namespaces == {"gatehouse"}
    assert [item["metadata"]["name"] for item in objects_of(name, "Namespace")] == ["gatehouse"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_probes_and_resources(name):
    missing = []
    for item in workloads(name):
        for container in pod_spec(item)["containers"]:
            where = f"{item['kind']} {item['metadata']['name']}/{container['name']}"
            if item["kind"] != "Job":  # a Job's pod runs to its end: nothing to route to or restart
                missing += [
                    f"{where}: {probe}" for probe in ("readinessProbe", "livenessProbe") if probe not in container
                ]
            resources = container.get("resources", {})
            missing += [f"{where}: requests.{r}" for r in ("cpu", "memory") if r not in resources.get("requests", {})]
            missing += [f"{where}: limits.memory"] if "memory" not in resources.get("limits", {}) else []
    assert not missing


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_meets_the_restricted_pod_security_standard(name):
    # The namespace enforces "restricted": a pod that does not meet it is refused at admission.
    assert objects_of(name, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    failures = []
    for item in workloads(name):
        pod = pod_spec(item)
        for container in pod["containers"]:
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            where = f"{item['metadata']['name']}/{container['name']}"
            if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
                failures.append(f"{where}: may run as root")
            if context.get("allowPrivilegeEscalation") is not False:
                failures.append(f"{where}: allowPrivilegeEscalation")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                failures.append(f"{where}: capabilities not all dropped")
            if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                failures.append(f"{where}: seccomp profile")
    assert not failures


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_gatehouse_containers_have_a_read_only_root_and_writable_tmp(name):
    for item, container in gatehouse_containers(name):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        volume = mounted_file(pod_spec(item), container, "/tmp/file")  # noqa: S108
        assert volume is not None and "emptyDir" in volume[0], f"{item['metadata']['name']}: /tmp is not writable"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_gateway_state_dir_is_a_writable_volume(name):
    gateway = deployment_running(name, "gateway")
    container = pod_spec(gateway)["containers"][0]
    state_dir = {variable["name"]: variable.get("value") for variable in container["env"]}["GATEWAY_STATE_DIR"]
    volume = mounted_file(pod_spec(gateway), container, f"{state_dir}/node")
    assert volume is not None and "emptyDir" in volume[0]
    dockerfile_env = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "ENV")
    assert f"GATEWAY_STATE_DIR={state_dir}" in dockerfile_env


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_gatehouse_container_runs_an_entrypoint_command(name):
    commands = entrypoint_commands()
    kustomization = yaml.safe_load((KUBERNETES / name / "kustomization.yaml").read_text())
    image = next(
        (
            f"{entry['newName']}:{entry['newTag']}"
            for entry in kustomization.get("images", [])
            if entry["name"] == "gatehouse"
        ),
        "gatehouse",  # the base keeps the placeholder each overlay replaces
    )
    for _item, container in gatehouse_containers(name):
        assert "command" not in container, "the image's entry point must stay in front"
        assert process_of(container) in commands["process"] | commands["one-shot"]
        assert container["image"] == image
    deployed = {process_of(container) for item, container in gatehouse_containers(name) if item["kind"] == "Deployment"}
    assert deployed == commands["process"]
    assert [process_of(container) for item, container in gatehouse_containers(name) if item["kind"] == "Job"] == [
        "migrate"
    ]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_exec_probes_ask_the_probe_script_about_their_own_process(name):
    for _item, container in gatehouse_containers(name):
        for probe in ("readinessProbe", "livenessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command is None:
                continue
            assert command[:2] == ["python", "deploy/container/probe.py"]
            assert command[2] in {"alive", "celery"}
            if command[2] == "celery":
                assert command[3] == process_of(container)  # the name in `-n NAME@%h`
            assert (ROOT / command[1]).exists()


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_http_probes_reach_the_portal_as_through_the_proxy(name):
    config = objects_of(name, "ConfigMap")[0]["data"]
    allowed_hosts = config["DJANGO_ALLOWED_HOSTS"].split(",")
    portal = pod_spec(deployment_running(name, "web"))["containers"][0]
    assert config["DJANGO_BEHIND_PROXY"] == "1"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        request = portal[probe]["httpGet"]
        headers = {header["name"]: header["value"] for header in request["httpHeaders"]}
        assert request["path"] == path
        assert headers["Host"] in allowed_hosts
        assert headers["X-Forwarded-Proto"] == "https"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_http_probes_and_services_use_ports_the_containers_declare(name):
    pods = {item["metadata"]["name"]: item for item in workloads(name)}
    for service in objects_of(name, "Service"):
        targets = [
            item
            for item in pods.values()
            if selector_matches(service["spec"]["selector"], item["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} workloads"
        port_names = {
            port["name"] for container in pod_spec(targets[0])["containers"] for port in container.get("ports", [])
        }
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    for _item, container in gatehouse_containers(name):
        if process_of(container) in PROCESS_PORTS:
            assert container["ports"] == [{"name": "http", "containerPort": PROCESS_PORTS[process_of(container)]}]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_gateway_has_a_disruption_budget_and_a_cpu_autoscaler(name):
    gateway = deployment_running(name, "gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    budgets = [
        item
        for item in objects_of(name, "PodDisruptionBudget")
        if selector_matches(item["spec"]["selector"]["matchLabels"], pod_labels)
    ]
    assert len(budgets) == 1
    autoscalers = [
        item
        for item in objects_of(name, "HorizontalPodAutoscaler")
        if item["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    ]
    assert len(autoscalers) == 1
    autoscaler = autoscalers[0]
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert [metric["resource"]["name"] for metric in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert "replicas" not in gateway["spec"], "the autoscaler owns the gateway's replicas"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_autoscaler_and_budget_targets_an_existing_deployment(name):
    deployments = {item["metadata"]["name"]: item for item in objects_of(name, "Deployment")}
    for autoscaler in objects_of(name, "HorizontalPodAutoscaler"):
        assert autoscaler["spec"]["scaleTargetRef"]["name"] in deployments
    for budget in objects_of(name, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            selector_matches(selector, item["spec"]["template"]["metadata"]["labels"]) for item in deployments.values()
        )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_beat_runs_alone(name):
    beat = deployment_running(name, "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert not [
        item
        for item in objects_of(name, "HorizontalPodAutoscaler")
        if item["spec"]["scaleTargetRef"]["name"] == beat["metadata"]["name"]
    ]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_referenced_secret_and_config_map_exists(name):
    secrets = secret_examples(name)
    config_maps = {item["metadata"]["name"]: item for item in objects_of(name, "ConfigMap")}
    for item in workloads(name):
        pod = pod_spec(item)
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (
                    f"{item['metadata']['name']}: no example of {volume['secret']['secretName']}"
                )
                keys = secret_keys(secrets[volume["secret"]["secretName"]])
                assert {entry["key"] for entry in volume["secret"].get("items", [])} <= keys
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {})
                if "secretKeyRef" in reference:
                    assert reference["secretKeyRef"]["key"] in secret_keys(secrets[reference["secretKeyRef"]["name"]])
                if "configMapKeyRef" in reference:
                    assert (
                        reference["configMapKeyRef"]["key"] in config_maps[reference["configMapKeyRef"]["name"]]["data"]
                    )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_file_variable_names_a_mounted_secret_key(name):
    secrets = secret_examples(name)
    for item in workloads(name):
        pod = pod_spec(item)
        for container in pod["containers"]:
            for variable in container.get("env", []):
                if not variable["name"].endswith("_FILE"):
                    continue
                where = f"{item['metadata']['name']}/{container['name']} {variable['name']}"
                found = mounted_file(pod, container, variable["value"])
                assert found is not None and "secret" in found[0], f"{where}: {variable['value']} is on no Secret mount"
                volume, relative = found
                assert secret_key_of(volume, relative) in secret_keys(secrets[volume["secret"]["secretName"]]), where


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_example_secret_key_is_used(name):
    """A key no container reads is a stale example, or a variable someone forgot to set."""
    secrets = secret_examples(name)
    used: set[tuple[str, str]] = set()
    for item in workloads(name):
        pod = pod_spec(item)
        for container in pod["containers"]:
            strings = [variable.get("value", "") for variable in container.get("env", [])] + container.get("args", [])
            for string in strings:
                found = mounted_file(pod, container, string) if string.startswith("/") else None
                if found and "secret" in found[0]:
                    used.add((found[0]["secret"]["secretName"], secret_key_of(found[0], found[1])))
    mounted = {
        volume["secret"]["secretName"]
        for item in workloads(name)
        for volume in pod_spec(item).get("volumes", [])
        if "secret" in volume
    }
    unused = {(secret, key) for secret in mounted for key in secret_keys(secrets[secret])} - used
    assert not unused


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_file_variable_is_one_the_code_reads(name):
    for _item, container in gatehouse_containers(name):
        for variable in container.get("env", []):
            if variable["name"].endswith("_FILE"):
                assert file_variable_is_read(variable["name"], process_of(container)), variable["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_gateway_is_given_no_control_plane_secret(name):
    gateway = pod_spec(deployment_running(name, "gateway"))
    names = {variable["name"] for variable in gateway["containers"][0]["env"]}
    assert not names & {
        "GATEHOUSE_SIGNING_KEY_FILE",
        "DATABASE_URL_FILE",
        "DJANGO_SECRET_KEY_FILE",
        "GATEHOUSE_KEK_1_FILE",
    }
    secret_names = {volume["secret"]["secretName"] for volume in gateway["volumes"] if "secret" in volume}
    assert "signing-key" not in set().union(*(secret_keys(secret_examples(name)[secret]) for secret in secret_names))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_setting_given_is_documented(name):
    names = set(objects_of(name, "ConfigMap")[0]["data"])
    for _item, container in gatehouse_containers(name):
        names |= {variable["name"] for variable in container.get("env", [])}
    assert not undocumented(names)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_example_redis_urls_are_forms_the_code_accepts(name):
    from gateway.redis_url import parse_redis_url

    for secret in secret_examples(name).values():
        values = {**secret.get("stringData", {})}
        if "redis-url" in values:
            parse_redis_url(values["redis-url"])
        if "celery-broker-url" in values:
            assert parse_redis_url(values["celery-broker-url"]).mode != "cluster"


# --- Compose ------------------------------------------------------------------------------------


def test_the_compose_file_matches_the_compose_specification():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = [
        f"{list(error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(compose())
    ]
    assert not errors


def test_the_compose_schema_catches_a_misspelt_field():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    document = compose()
    document["services"]["portal"]["healthchek"] = document["services"]["portal"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(document))


def test_haproxy_accepts_the_proxy_configuration(tmp_path):
    """HAProxy's own configuration check (Debian's haproxy, which .ci/run installs), with a
    throwaway certificate where the compose secret would be mounted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = tmp_path / "tls_certificate"
    pem.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    configuration = compose()["configs"]["haproxy"]["content"]
    assert "/run/secrets/tls_certificate" in configuration
    (tmp_path / "haproxy.cfg").write_text(configuration.replace("/run/secrets/tls_certificate", str(pem)))
    result = run_tool("haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_every_compose_process_runs_an_entrypoint_command():
    commands = entrypoint_commands()
    services = compose_gatehouse_services()
    ran = [service["command"][0] for service in services.values()]
    assert set(ran) <= commands["process"] | commands["one-shot"]
    assert set(ran) >= commands["process"] | {"migrate"}
    assert ran.count("beat") == 1
    assert ran.count("gateway") == 2
    assert not [name for name, service in services.items() if "entrypoint" in service]


def test_compose_processes_start_after_the_migrations():
    for name, service in compose_gatehouse_services().items():
        if service["command"][0] in {"web", "worker", "publisher", "beat", "ingest"}:
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert compose()["services"]["migrate"]["restart"] == "no"


def test_every_compose_secret_is_declared_and_every_file_variable_mounted():
    document = compose()
    declared = set(document["secrets"])
    for name, service in document["services"].items():
        mounted = compose_secret_names(service)
        assert mounted <= declared, name
        for variable, value in (service.get("environment") or {}).items():
            if variable.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name} {variable}"
                assert value.removeprefix("/run/secrets/") in mounted, f"{name} {variable}"
    used = set().union(*(compose_secret_names(service) for service in document["services"].values()))
    assert used == declared


def test_every_compose_file_variable_is_one_the_code_reads():
    for name, service in compose_gatehouse_services().items():
        for variable in service.get("environment") or {}:
            if variable.endswith("_FILE"):
                assert file_variable_is_read(variable, service["command"][0]), f"{name} {variable}"


def test_compose_gateways_hold_no_control_plane_secret():
    for name, service in compose_gatehouse_services().items():
        if service["command"][0] == "gateway":
            assert compose_secret_names(service) == {
                "redis_url",
                "gatehouse_gateway_key",
                "gatehouse_signing_public_key",
                "gatehouse_metrics_token",
            }, name


def test_every_compose_setting_is_documented():
    names = {
        variable for service in compose_gatehouse_services().values() for variable in service.get("environment") or {}
    }
    assert not undocumented(names)


@pytest.mark.parametrize("process", ["web", "gateway"])
def test_compose_health_checks_ask_readyz_on_the_process_port(process):
    services = {
        name: service for name, service in compose_gatehouse_services().items() if service["command"][0] == process
    }
    assert services
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "deploy/container/probe.py", "http"], name
        assert test[4] == f"http://127.0.0.1:{PROCESS_PORTS[process]}/readyz", name


def test_compose_gateways_are_distinct_nodes_with_their_own_state():
    gateways = [service for service in compose_gatehouse_services().values() if service["command"][0] == "gateway"]
    assert len({service["environment"]["GATEWAY_NODE_ID"] for service in gateways}) == len(gateways)
    volumes = [volume for service in gateways for volume in service["volumes"]]
    assert len({volume.split(":")[0] for volume in volumes}) == len(gateways)
    assert {volume.split(":")[1] for volume in volumes} == {
        service["environment"]["GATEWAY_STATE_DIR"] for service in gateways
    }


def test_the_proxy_sends_traffic_to_compose_services_on_their_ports():
    document = compose()
    config = document["configs"]["haproxy"]["content"]
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+) ", config, re.M)
    assert servers
    for _, host, port in servers:
        service = document["services"][host]
        assert int(port) == PROCESS_PORTS[service["command"][0]]
    gateways = {name for name, service in compose_gatehouse_services().items() if service["command"][0] == "gateway"}
    assert {host for _, host, _ in servers} == gateways | {"portal"}
    proxy = document["services"]["proxy"]
    for certificate in re.findall(r"crt (\S+)", config):
        assert certificate.removeprefix("/run/secrets/") in compose_secret_names(proxy)
    assert proxy["depends_on"]["portal"] == {"condition": "service_healthy"}
