"""config/localize.yaml, the node's parameter declarations and launch/localize.launch.py agree.

`launch`/`launch_ros` cannot be installed here, so the launch file is compiled and read with ast;
the parameter file is read both by PyYAML and by rcl itself (the node declares its parameters
from it in-process, in a namespace, which also proves the file's node key matches there).
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from pathlib import Path

import pytest
import yaml

from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.nodes.parameters import (
    BY_NAME, NODE_NAME, PARAMETERS, YAML_NODE_KEY, format_params_yaml, is_ros_own,
)

ROOT = Path(__file__).resolve().parents[1]
YAML_PATH = ROOT / "config" / "localize.yaml"
LAUNCH_PATH = ROOT / "launch" / "localize.launch.py"
REQUIRED_LAUNCH_ARGUMENTS = {"tile_set", "model", "config", "namespace", "use_sim_time"}


def yaml_parameters() -> dict:
    doc = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))
    assert list(doc) == [YAML_NODE_KEY] and list(doc[YAML_NODE_KEY]) == ["ros__parameters"]
    return doc[YAML_NODE_KEY]["ros__parameters"]


def test_yaml_is_the_generated_parameter_table():
    assert YAML_PATH.read_text(encoding="utf-8") == format_params_yaml(), (
        "config/localize.yaml differs from crossview_ros/nodes/parameters.py; edit the table there and run "
        "`python -m crossview_ros.nodes.parameters > config/localize.yaml`")


def test_yaml_lists_every_parameter_with_its_default_unit_and_description():
    params = yaml_parameters()
    assert list(params) == [p.name for p in PARAMETERS]
    defaults = LocalizerConfig()
    for f in dataclasses.fields(LocalizerConfig):  # every Localizer setting, same name and default
        assert params[f.name] == getattr(defaults, f.name) and type(params[f.name]) is type(getattr(defaults, f.name))
    for spec in PARAMETERS:
        assert params[spec.name] == spec.default and type(params[spec.name]) is type(spec.default), spec.name
    lines = {m.group(1): m for m in re.finditer(r"^    (\w+): .*?  # \[([^\]]+)\] (\S.*)$",
                                                YAML_PATH.read_text(encoding="utf-8"), re.M)}
    for spec in PARAMETERS:
        m = lines[spec.name]
        assert m.group(2) == spec.bracket and m.group(3) == spec.description, spec.name


def test_node_declares_exactly_the_yaml_parameters(monkeypatch):
    """The real declarations, fed the real file through rcl, in a namespace."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    from crossview_ros.nodes.cameras import RIG_PARAMETERS
    from crossview_ros.nodes.localize_node import LocalizeNode

    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # the node's services stay on this host
    context = Context()
    rclpy.init(context=context, args=["localize_node", "--ros-args", "--params-file", str(YAML_PATH),
                                      "-r", "__ns:=/robot1"], domain_id=random.SystemRandom().randint(1, 100))
    try:
        node = LocalizeNode(context=context)  # declares and validates; the Localizer is built by start()
        try:
            declared = set(node.list_parameters([], 0).names)
            # plus the camera rig's node-level parameters (nodes/cameras.py; no camera named: no mounts)
            assert {n for n in declared if not is_ros_own(n)} == set(BY_NAME) | set(RIG_PARAMETERS)
            described = {d.name: d for d in node.describe_parameters(list(BY_NAME))}
            params = yaml_parameters()
            for spec in PARAMETERS:
                value = node.get_parameter_or(spec.name).value
                assert (value if value is not None else []) == params[spec.name], spec.name
                assert described[spec.name].read_only == spec.read_only
                assert described[spec.name].description.startswith(spec.description)
            assert node.get_fully_qualified_name() == f"/robot1/{NODE_NAME}"
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def _launch_tree() -> ast.Module:
    source = LAUNCH_PATH.read_text(encoding="utf-8")
    compile(source, str(LAUNCH_PATH), "exec")  # valid Python
    return ast.parse(source)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _first_str(call: ast.Call) -> str:
    assert call.args and isinstance(call.args[0], ast.Constant), ast.dump(call)
    return call.args[0].value


def test_launch_file_sets_only_declared_parameters():
    tree = _launch_tree()
    (node,) = _calls(tree, "Node")
    kw = {k.arg: k.value for k in node.keywords}
    assert kw["executable"].value == "localize_node" and kw["name"].value == NODE_NAME
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "localize_node = crossview_ros.nodes.localize_node:main" in setup
    assert isinstance(kw["parameters"], ast.List)
    keys = [k.value for d in kw["parameters"].elts if isinstance(d, ast.Dict) for k in d.keys]
    assert keys, "the launch file passes no parameters"
    unknown = [k for k in keys if k not in BY_NAME and not is_ros_own(k)]
    assert not unknown, f"launch/localize.launch.py sets parameters the node does not declare: {unknown}"
    # Its other entries are parameter files: the `config` launch argument.
    files = [e for e in kw["parameters"].elts if not isinstance(e, ast.Dict)]
    assert [_first_str(c) for f in files for c in _calls(f, "LaunchConfiguration")] == ["config"]


def test_launch_arguments_are_declared_and_the_default_config_is_ours():
    tree = _launch_tree()
    declared = {_first_str(c) for c in _calls(tree, "DeclareLaunchArgument")}
    assert REQUIRED_LAUNCH_ARGUMENTS <= declared
    used = {_first_str(c) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, f"launch configurations used but not declared: {used - declared}"
    joins = [[a.value for a in c.args if isinstance(a, ast.Constant)] for c in _calls(tree, "join")]
    assert ["config", "localize.yaml"] in joins
