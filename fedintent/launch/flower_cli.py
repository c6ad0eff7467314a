"""The ``flwr`` command line as fedintent calls it, and the Flower app folder it runs.

Every ``flwr`` and ``flower-*`` command gets :func:`flower_env`: its own ``FLWR_HOME``, no
telemetry, no update check, no runtime dependency installation and no model download, so a
run never reaches the network. Run-config values travel as ``-c key=value`` in TOML syntax.
"""

import math
import os
import sys
from pathlib import Path

from fl_protocol.wire import RUN_CONFIG_DEFAULTS


def flower_env(flwr_home: Path) -> dict[str, str]:
    """This process's environment for a Flower command that keeps its state in ``flwr_home``."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env |= {
        "FLWR_HOME": str(flwr_home),
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def toml_value(value: str | int | float | Path) -> str:
    """A run-config value in the TOML syntax that ``flwr run -c`` expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def config_overrides(run_config: dict) -> list[str]:
    """``flwr run`` arguments that set every key of ``run_config``: ``-c key=value ...``."""
    arguments = []
    for key, value in run_config.items():
        arguments += ["-c", f"{key}={toml_value(value)}"]
    return arguments


def write_app(app_dir: Path) -> Path:
    """A Flower app folder that points at the installed ServerApp and ClientApp.

    The app bundle carries only this ``pyproject.toml`` (no code, no data); the code it names
    is the installed fedintent package, so the same code runs whether fedintent was installed
    from a checkout or from a wheel.
    """
    app_dir.mkdir(parents=True)
    config = "\n".join(f"{k} = {toml_value(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    (app_dir / "pyproject.toml").write_text(
        '[project]\nname = "fedintent"\nversion = "0.1.0"\n'
        'description = "fedintent local simulation"\nlicense = "Apache-2.0"\n\n'
        '[tool.flwr.app]\npublisher = "fedintent"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fl_server.server_app:app"\n'
        'clientapp = "fl_client.client_app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n",
        encoding="utf-8",
    )
    return app_dir
