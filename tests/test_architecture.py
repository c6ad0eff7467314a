"""The package layering of docs/ARCHITECTURE.md, held by reading every import.

Site (``fl_client``) and server (``fl_server``) are peers that share only the wire contract and
file primitives (``fl_protocol``) and the model families (``models``); neither imports the other.
The command line and operator tooling (``fedintent``) sit on top and may use everything. No
module or test imports another module's private (underscore) name.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fl_protocol", "models", "data_synth", "fl_client", "fl_server", "fedintent")
ALLOWED = {
    "fl_protocol": {"fl_protocol"},
    "models": {"models", "fl_protocol"},
    "data_synth": {"data_synth", "fl_protocol"},
    "fl_client": {"fl_client", "fl_protocol", "models"},
    "fl_server": {"fl_server", "fl_protocol", "models", "data_synth"},
    "fedintent": set(PACKAGES),
}
"""Package -> the project packages its modules may import."""


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(package)
        for module, _, line in imports(path)
        if module.split(".")[0] in PACKAGES and module.split(".")[0] not in ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_modules():
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
        for path in python_files(*PACKAGES, "tests", "benchmarks")
        for module, names, line in imports(path)
        if module.split(".")[0] in PACKAGES
        for name in names
        if name.startswith("_")
    ]
    assert not wrong, "\n".join(wrong)


def test_the_flower_app_bundle_carries_every_package_a_site_or_the_server_runs():
    """A deployed site gets its code from the app bundle: a layer missing there is an import
    error at every site."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    include = text.split("fab-include", 1)[1].split("]", 1)[0]
    needed = ALLOWED["fl_client"] | ALLOWED["fl_server"]
    assert all(f'"{package}/**/*.py"' in include for package in needed), include
