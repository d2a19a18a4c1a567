"""The `streamer` command makes torch's OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE)
unless the user said how they should wait; libgomp itself is asked what it read. ONNX Runtime's
threads do not spin either."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import cli_env

from streamer.openmp import apply_wait_policy, wait_policy_update

# streamer.cli.main runs a command, then torch loads in the same process, as a command's handler would
# load it; OMP_DISPLAY_ENV=VERBOSE makes libgomp print the settings it read when it loaded. A passive
# policy shows as a spin count of 0 (libgomp prints 'PASSIVE' for its own default too).
PROGRAM = "from streamer.cli import main\nmain(['check-config'])\nimport torch\ntorch.ones(64, 64) @ torch.ones(64, 64)\n"


def openmp_settings(**env: str) -> str:
    base = {k: v for k, v in cli_env(OMP_DISPLAY_ENV="VERBOSE").items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, env={**base, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_passive_unless_the_environment_says_how_to_wait():
    assert wait_policy_update({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert wait_policy_update({"OMP_WAIT_POLICY": "active"}) == {}
    assert wait_policy_update({"GOMP_SPINCOUNT": "300000"}) == {}  # libgomp's own default, asked for
    environ = {"PATH": "/bin"}
    assert apply_wait_policy(environ) == "PASSIVE" and environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_wait_policy(environ) == "ACTIVE" and environ == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.system
def test_libgomp_reads_the_policy_the_command_set():
    assert "GOMP_SPINCOUNT = '0'" in openmp_settings()  # threads sleep at once (the user's own value: the test above)


def test_onnx_runtime_threads_sleep_while_they_wait_too(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import helper

    from streamer.inference.backends import OnnxRuntimeNetwork

    shape = [1, 3, 4, 4]
    tensor = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [tensor("x")], [tensor("y")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "relu.onnx")
    network = OnnxRuntimeNetwork(tmp_path / "relu.onnx", 2)
    assert network.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
