"""`lead-train --help` and config errors stay light: no torch, no lightning; the package loads lazily."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lead_lightning

HEAVY = ("torch", "lightning", "pytorch_lightning")

# Runs lead-train's `main()` as the console script would, then reports the exit code and which heavy
# packages were imported (stdout's last line).
SCRIPT = """
import json, sys
from lead_lightning.train import main
sys.argv = ["lead-train", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
sys.stdout.flush()
tops = sorted({m.split(".")[0] for m in sys.modules})
print("\\nRESULT " + json.dumps({"code": code, "modules": tops}))
"""


def run_main(args: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "RESULT " in proc.stdout, proc.stderr[-3000:]
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    return result["code"], result["modules"], proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--help"], 0, "== Configuration groups =="),
        (["selection.budgt=0.1"], 1, "Key 'budgt' not in"),
        (["bandit=nope"], 1, "Could not find 'bandit/nope'"),
        (["rounds=many"], 1, "rounds"),
    ],
    ids=["help", "typo", "unknown-option", "bad-type"],
)
def test_help_and_config_errors_import_neither_torch_nor_lightning(args, code, expected, tmp_path):  # noqa: ANN001
    exit_code, modules, out, err = run_main(args, tmp_path)
    assert exit_code == code, (out[-2000:], err[-2000:])
    assert expected in (out if code == 0 else err)
    assert not set(HEAVY) & set(modules), sorted(set(HEAVY) & set(modules))
    assert "hydra" in modules and "lead_lightning" in modules  # it really ran the app
    assert list(tmp_path.iterdir()) == []  # nothing written: no run directory for a run that never started


def test_import_lead_lightning_is_light():
    code = "import sys, lead_lightning, lead_lightning.app; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    modules = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert not set(HEAVY) & set(modules)


def test_all_matches_the_lazy_table_and_dir():
    assert sorted(lead_lightning.__all__) == sorted(lead_lightning._LAZY)
    assert len(set(lead_lightning.__all__)) == len(lead_lightning.__all__)
    assert set(lead_lightning.__all__) <= set(dir(lead_lightning))
    assert "__version__" in dir(lead_lightning)


@pytest.mark.parametrize("name", sorted(lead_lightning._LAZY))
def test_every_public_name_imports_from_its_module(name):  # noqa: ANN001
    module = lead_lightning._LAZY[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    value = getattr(lead_lightning, name)
    assert value is getattr(importlib.import_module(module), name)
    namespace: dict[str, object] = {}
    exec(f"from lead_lightning import {name}", namespace)  # the form users write
    assert namespace[name] is value


def test_type_checking_block_agrees_with_the_lazy_table():
    """What mypy sees (the `if TYPE_CHECKING:` imports) is what `__getattr__` loads at run time."""
    tree = ast.parse(Path(lead_lightning.__file__).read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"
    )
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        seen.update({alias.name: node.module for alias in node.names})
    assert seen and all(lead_lightning._LAZY[name] == module for name, module in seen.items())
    assert set(seen) == set(lead_lightning._LAZY)  # every public name, typed


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        lead_lightning.NoSuchThing  # noqa: B018
    assert not hasattr(lead_lightning, "NoSuchThing")
