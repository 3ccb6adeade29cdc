"""The Globus Compute endpoint templates in deploy/globus/ build real Parsl objects.

The endpoint (globus-compute-endpoint 4.x, not a dependency here) renders the template with
Jinja and passes the ``engine`` keys to Parsl's HighThroughputExecutor and the ``provider`` keys
to Parsl's SlurmProvider; the templates use only ``{{ name|default(value) }}``, rendered here with
the defaults, so the installed Parsl checks every key and value.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "globus"
# GlobusComputeEngine's own keys; every other engine key goes to HighThroughputExecutor.
ENGINE_ONLY = {"type", "max_retries_on_system_failure", "address"}


def _render_defaults(text: str) -> str:
    return re.sub(r"\{\{\s*\w+\|default\((.*?)\)\s*\}\}",
                  lambda m: ast.literal_eval(m.group(1)) if m.group(1) else "", text)


@pytest.mark.parametrize("node", ["gpu", "cpu"])
def test_endpoint_template_builds_parsl_objects(node, tmp_path):
    import parsl.launchers
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import SlurmProvider

    text = _render_defaults((DEPLOY / f"perlmutter-{node}" / "user_config_template.yaml.j2").read_text())
    assert "{{" not in text
    engine = yaml.safe_load(text)["engine"]
    assert engine["type"] == "GlobusComputeEngine" and engine["encrypted"] is True
    assert engine["max_retries_on_system_failure"] >= 1
    provider = dict(engine["provider"])
    assert provider.pop("type") == "SlurmProvider"
    launcher = dict(provider.pop("launcher"))
    launcher_cls = getattr(parsl.launchers, launcher.pop("type"))
    slurm = SlurmProvider(**provider, launcher=launcher_cls(**launcher))
    htex = HighThroughputExecutor(**{k: v for k, v in engine.items() if k not in ENGINE_ONLY | {"provider"}},
                                  provider=slurm)
    assert slurm.constraint == node and "#SBATCH --exclusive" in slurm.scheduler_options
    assert htex.encrypted and htex.max_workers_per_node == 4
    if node == "gpu":
        assert len(htex.available_accelerators) == 4
        assert "-c 128" in slurm.launcher.overrides  # the worker pool gets the whole node
    yaml.safe_load((DEPLOY / f"perlmutter-{node}" / "config.yaml").read_text())["display_name"]
