"""Shared fixtures."""

import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_protocol.wire import RUN_CONFIG_DEFAULTS


@pytest.fixture
def task_identity():
    """Messages made outside a Flower process need a run, node and task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = saved


@pytest.fixture
def ctx(tmp_path) -> Context:
    """A deployed site's context outside Flower: data and state folders under ``tmp_path``, the
    default run config."""
    node = {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state")}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                   run_config=dict(RUN_CONFIG_DEFAULTS))
