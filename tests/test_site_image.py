"""The site image and its entrypoint, read as files (no Docker here): a lean install, labelled
with the package's version, a health check the entrypoint serves, the real encoder loader, and
no budget of its own; and the health probe against Flower's own health service."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from fedintent.launch.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
ENTRYPOINT = (ROOT / "deploy" / "site-entrypoint.sh").read_text(encoding="utf-8")
PROBE = ROOT / "deploy" / "site_healthcheck.py"


def instructions(name: str) -> list[str]:
    """The Dockerfile's ``name`` instructions, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines()
            if line.split(None, 1)[:1] == [name]]


def test_the_image_is_labelled_with_the_packages_version_and_its_base():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in instructions("ARG")
    [labels] = instructions("LABEL")
    for key in ("title", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_the_base_image_is_a_python_311_slim_pinned_only_by_a_real_digest():
    [base] = [a for a in instructions("ARG") if a.startswith("BASE_IMAGE=")]
    image = base.removeprefix("BASE_IMAGE=")
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", image), image
    assert instructions("FROM") == ["${BASE_IMAGE}"]


def test_the_image_installs_the_lean_site_install_and_loads_the_real_encoder():
    install = next(r for r in instructions("RUN") if "pip install --constraint" in r)
    assert "pip install --constraint /tmp/constraints.txt . " in install  # no extras
    assert "[operator]" not in DOCKERFILE and "[dev]" not in DOCKERFILE
    assert "pip uninstall --yes sentence-transformers scikit-learn" in install
    loader = re.search(r'python -c "(from models[^"]+)"', install).group(1)
    imported = ast.parse(loader).body[0]
    module = ROOT.joinpath(*imported.module.split(".")).with_suffix(".py")
    defined = {node.name for node in ast.parse(module.read_text()).body
               if isinstance(node, ast.FunctionDef)}
    assert {alias.name for alias in imported.names} <= defined, loader


def test_the_image_sets_no_budget_of_its_own():
    """Unless the site sets MAX_EPSILON, the ClientApp's default applies: one default."""
    assert "MAX_EPSILON" not in " ".join(instructions("ENV"))
    assert 'MAX_EPSILON="${MAX_EPSILON:-' not in ENTRYPOINT
    assert 'setting max-epsilon "${MAX_EPSILON:-}"' in ENTRYPOINT


def test_the_health_check_asks_the_health_service_the_entrypoint_starts():
    [health] = instructions("HEALTHCHECK")
    assert health.endswith('CMD ["python", "/usr/local/bin/site_healthcheck.py"]')
    assert "COPY deploy/site_healthcheck.py /usr/local/bin/site_healthcheck.py" in DOCKERFILE
    assert "HEALTH_PORT=9096" in " ".join(instructions("ENV"))
    assert '--health-server-address "127.0.0.1:$HEALTH_PORT"' in ENTRYPOINT


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True,
                          timeout=60)


def test_the_health_probe_answers_for_flowers_health_service_and_fails_without_it():
    from flwr.supercore.grpc_health import run_health_server_grpc_no_tls

    address = f"127.0.0.1:{free_port()}"
    server = run_health_server_grpc_no_tls(address)
    try:
        serving = probe(address)
    finally:
        server.stop(None)
    assert serving.returncode == 0 and f"SuperNode at {address}: SERVING" in serving.stdout
    down = probe(address)
    assert down.returncode == 1
    assert f"no answer from the SuperNode's health service at {address}" in down.stderr


def docker_ignored(rules: list[tuple[bool, re.Pattern]], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule matching it or a
    folder above it decides (``!`` lets it back in); ``*`` stays within a path element."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for allowed, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            ignored = not allowed
    return ignored


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        allowed = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        rules.append((allowed, re.compile(regex)))
    return rules


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    """Found in review: the allow-list left out ``fl_protocol/`` and the health probe, so the
    documented ``docker build`` failed at their COPY."""
    rules = dockerignore_rules()
    assert docker_ignored(rules, "tests/test_site_image.py")  # the rules do leave things out
    assert docker_ignored(rules, "fl_client/__pycache__/x.pyc")
    sources = [source for copy in instructions("COPY") for source in copy.split()[:-1]]
    assert "fl_protocol/" in sources
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [
            f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        assert files, f"COPY {source}: nothing there"
        left_out = [f for f in files if docker_ignored(rules, f.relative_to(ROOT).as_posix())]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:3]}"


def test_the_image_copies_every_package_the_install_needs():
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]}
    copied = {copy.split()[0].strip("/") for copy in instructions("COPY")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_the_entrypoint_starts_the_supernode_that_refuses_redirects():
    assert 'exec fedintent-supernode "$@"' in ENTRYPOINT
    assert "flower-supernode" not in ENTRYPOINT.split("set -eu", 1)[1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedintent-supernode"] == "fl_client.supernode:main"
