"""The package layering of docs/ARCHITECTURE.md, held by reading every import.

Site (``fl_client``) and server (``fl_server``) are peers that share only the wire contract and
file primitives (``fl_protocol``) and the model families (``models``); neither imports the other.
The command line and operator tooling (``fedintent``) sit on top and may use everything. No
module or test imports another module's private (underscore) name.
"""

import ast
import subprocess
import sys
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


OPERATOR_ONLY = ("ray", "flwr.simulation", "datasets", "flwr_datasets", "sklearn", "matplotlib",
                 "scipy", "psutil", "sentence_transformers")
"""What the lean site install (``pip install .``, the site image) leaves out: the
``[operator]`` extra (``fedintent.commands.OPERATOR_MODULES``) and Flower's simulation engine,
and sentence-transformers, which only the encoder wheel declares."""
SITE_PACKAGES = ("fl_client", "fl_protocol", "models")
"""Everything in these runs at a site (the ClientApp and what it loads)."""
SITE_COMMANDS = {"fedintent/commands/data.py": ("run_check_data",),
                 "fedintent/commands/site.py": ("run_privacy_report",),
                 "fedintent/commands/predict.py": ("run_predict", "run_list_models")}
"""The ``fedintent`` commands a site's IT team runs, and their handlers."""


def is_operator_only(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in OPERATOR_ONLY)


def module_file(module: str) -> Path | None:
    """The project file of a dotted module name; ``None`` outside the project."""
    base = ROOT.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def load_time_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: none inside a function."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            found += load_time_imports(node)
    return found


def site_reachable_imports() -> list[str]:
    """Every outside module the site's code can import, as 'module (file:line)': all of the
    site packages, and from the ``fedintent`` command line what loads at start plus the bodies
    of the site's commands, followed through every project module they import."""
    queue = [ROOT / "fedintent" / "cli.py", *python_files(*SITE_PACKAGES)]
    seen, outside = set(), []
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        relative = str(path.relative_to(ROOT))
        if relative.split("/")[0] in SITE_PACKAGES:
            nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        else:
            nodes = load_time_imports(tree)
            handlers = SITE_COMMANDS.get(relative, ())
            nodes += [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                      and f.name in handlers for n in ast.walk(f)
                      if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in nodes:
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif node.module and node.level == 0:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in PACKAGES:
                    queue += [file] if (file := module_file(module)) else []
                elif module_file(module) is None and module == modules[0]:
                    outside.append(f"{module} ({relative}:{node.lineno})")
    return outside


def test_the_site_never_imports_what_the_lean_site_install_leaves_out():
    """`pip install .` (the site image) has no Ray, datasets, scikit-learn, matplotlib,
    scipy of its own or psutil: the ClientApp and the site's commands must not need them."""
    reached = site_reachable_imports()
    assert any(m.startswith("torch ") for m in reached)  # the walk does reach the site's code
    wrong = [m for m in reached if is_operator_only(m.split(" ")[0])]
    assert not wrong, "\n".join(wrong)


def test_the_operator_extra_holds_every_operator_only_package():
    from fedintent.commands import OPERATOR_MODULES

    assert set(OPERATOR_MODULES) <= set(OPERATOR_ONLY)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    base = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    operator = text.split("\noperator = [", 1)[1].split("]\n", 1)[0]
    for requirement in ("flwr[simulation]", "flwr-datasets", "scikit-learn", "matplotlib",
                        "scipy", "psutil"):
        assert f'"{requirement}' in operator and f'"{requirement}' not in base, requirement
    assert '"fedintent[operator]"' in text.split("\ndev = [", 1)[1].split("]\n", 1)[0]


def test_loading_the_client_app_does_not_import_opacus():
    """Flower starts a fresh ClientApp process for every message, and most never train
    (evaluation, three of SecAgg+'s four stages): Opacus' 2 s import is paid only by those
    that do, where the training and accounting functions import it."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, fl_client.client_app; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opacus'))"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
