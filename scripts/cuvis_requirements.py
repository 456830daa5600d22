"""Print the cuvis extra's requirements for an install without torchvision.

`cuvis_requirements.py core` prints the extra's cuvis-ai-core requirement, to install with
--no-deps; with no argument it prints the rest of the extra and, once cuvis-ai-core is installed,
its own requirements, torchvision left out.

cuvis-ai-core declares torchvision but never imports it, and torchvision pins the CUDA build of
torch 2.14.1 (5.5 GB). setup-cuvis.sh uses this where the disk is short, to run cuvis-ai-core on
the small CPU torch; torch's own version range stays in the list, so pip refuses a torch that
cuvis-ai-core does not accept.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

LEFT_OUT = {"torchvision"}
CORE = "cuvis-ai-core"


def plain(requirements: list[str]) -> list[Requirement]:
    """The requirements that apply without extras, on this interpreter."""
    parsed = [Requirement(r) for r in requirements]
    return [r for r in parsed if r.marker is None or r.marker.evaluate({"extra": ""})]


def main() -> None:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    extra = plain(project["optional-dependencies"]["cuvis"])
    if sys.argv[1:] == ["core"]:
        print(*[r for r in extra if r.name == CORE])
        return
    for requirement in [r for r in extra if r.name != CORE] + plain(requires(CORE) or []):
        if requirement.name not in LEFT_OUT:
            print(requirement)


if __name__ == "__main__":
    main()
