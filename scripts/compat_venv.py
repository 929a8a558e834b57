"""Build a virtualenv with one LiteLLM release serving as a proxy, this project and what the
compatibility tests need (``make compat`` builds one per end of the supported range).

    python scripts/compat_venv.py VERSION VENV_DIR

``litellm[proxy]==VERSION`` is installed when its extra resolves. From 1.109 on it does not from the
package index (it pins ``litellm-proxy`` builds the index lacks), so the release is installed with the
``proxy`` extra's other requirements, plus the newest ``litellm-proxy-extras`` and
``litellm-enterprise`` the index has: the way README.md tells users to install such a release.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_REQUIREMENTS = ["pytest>=8", "pytest-asyncio>=0.23", "pytest-timeout>=2.3", "httpx>=0.27", "PyYAML>=6.0"]
# Published as exact builds of each release; the index has other builds of them.
UNPINNED = {"litellm-proxy-extras", "litellm-enterprise"}
# The proxy extra's requirements, read from the installed release's metadata inside the venv.
PROXY_REQUIREMENTS = """
import importlib.metadata as md
from packaging.requirements import Requirement
for text in md.requires("litellm") or []:
    req = Requirement(text)
    if req.marker is None or req.marker.evaluate({"extra": ""}) or not req.marker.evaluate({"extra": "proxy"}):
        continue
    if req.name == "litellm-proxy":
        continue
    print(req.name if req.name in UNPINNED else f"{req.name}{req.specifier}")
"""


def pip(python: Path, *args: str, check: bool = True) -> bool:
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], check=False)
    if check and result.returncode != 0:
        sys.exit(f"pip install {' '.join(args)} failed")
    return result.returncode == 0


def build(version: str, folder: Path) -> None:
    venv.create(folder, with_pip=True, clear=True)
    python = folder / "bin" / "python"
    project = ["-e", str(REPO)]
    if pip(python, f"litellm[proxy]=={version}", *TEST_REQUIREMENTS, *project, check=False):
        return
    print(f"litellm[proxy]=={version} does not resolve: its proxy requirements one by one", flush=True)
    pip(python, f"litellm=={version}", "packaging", *TEST_REQUIREMENTS, *project)
    code = f"UNPINNED = {sorted(UNPINNED)!r}\n{PROXY_REQUIREMENTS}"
    wanted = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.split()
    pip(python, f"litellm=={version}", *wanted)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    build(sys.argv[1], Path(sys.argv[2]))


if __name__ == "__main__":
    main()
