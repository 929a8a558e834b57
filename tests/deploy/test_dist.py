"""The package installs from a clone as the README says (it is on no public index): the wheel built
from the checkout passes ``twine check`` and holds every module, the callback included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_wheel_from_the_checkout_installs_and_imports(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    # What `make dist` runs (an isolated build: pip fetches the build backend named in pyproject.toml).
    subprocess.run([str(BIN / "python"), "-m", "build", "--wheel", "--outdir", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("akto_litellm_ingest-*.whl")
    check = subprocess.run([str(BIN / "twine"), "check", "--strict", str(wheel)], capture_output=True, text=True)
    assert check.returncode == 0 and "PASSED" in check.stdout, check.stdout + check.stderr

    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import akto_hook, akto_ingest, akto_worker, akto_hook.callback, akto_worker.lifecycle;"
        "print(akto_hook.__file__); print(akto_hook.AktoLogger.__name__, akto_hook.AktoGuardrail.__name__)"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env={"PATH": str(BIN), "PYTHONPATH": str(site), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    where, names = result.stdout.splitlines()
    assert Path(where).is_relative_to(site), "imported from the installed wheel, not the checkout"
    assert names == "AktoLogger AktoGuardrail"
    assert (site / "bin" / "akto-ingest").exists()
    # Every module of the checkout is in the wheel: a subpackage missing from pyproject.toml's list
    # would import here from no file at all only when a request reaches it.
    for folder in ("common", "hook", "worker"):
        for module in (ROOT / folder).rglob("*.py"):
            installed = site / module.relative_to(ROOT / folder)
            assert installed.exists(), f"{module.relative_to(ROOT)} is not in the wheel"
