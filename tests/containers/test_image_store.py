"""A rebuild leaves no orphan in the engine's image store: images/engine.sh's `tokcls_remove_replaced`, which
images/build.sh and scripts/build_local_base.sh call after building, removes the image a name pointed to before
(CI rebuilt the 2.8 GB trainer image on every run and kept each old one untagged: 5 GB of layers on one host), and
keeps an old image that another name still uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from tests.containers.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]


def engine(script: str, context: Path) -> str:
    """Run `script` in bash with images/engine.sh sourced and an engine picked; its stdout."""
    prologue = 'set -euo pipefail; . images/engine.sh; tokcls_pick_engine "$PWD"\n'
    result = subprocess.run(["bash", "-c", prologue + script], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "CTX": str(context)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def names():
    if not (shutil.which("podman") or shutil.which("docker") or shutil.which("buildah")):
        unavailable("no container engine (bash scripts/install_container_tools.sh)")
    tag = uuid.uuid4().hex[:8]
    made = [f"localhost/tokcls-test-rebuilt:{tag}", f"localhost/tokcls-test-other-name:{tag}"]
    yield made
    engine(" ".join(f'"$ENGINE" rmi -f {name} >/dev/null 2>&1 || true;' for name in made), REPO)


def _build(context: Path, content: str, image: str) -> tuple[str, str]:
    """Build a one-file image FROM scratch as `image` the way images/build.sh does: (old ID, new ID)."""
    (context / "file").write_text(content)
    (context / "Containerfile").write_text("FROM scratch\nCOPY file /file\n")
    script = (f'old="$(tokcls_image_id {image})"\n'
              f'"$ENGINE" build -q -f "$CTX/Containerfile" -t {image} "$CTX" >/dev/null\n'
              f'tokcls_remove_replaced "$old" {image}\necho "$old|$(tokcls_image_id {image})"')
    old, new = engine(script, context).split("|")
    return old, new


def test_a_rebuild_removes_the_image_it_replaced_but_not_one_another_name_uses(tmp_path, names):
    rebuilt, other = names
    exists = 'for id in "$@"; do tokcls_image_exists "$id" && echo yes || echo no; done'

    old, first = _build(tmp_path, "first", rebuilt)
    assert old == "" and first
    old, second = _build(tmp_path, "second", rebuilt)
    assert old == first != second
    assert engine(f"set -- {first} {second}\n{exists}", tmp_path).split() == ["no", "yes"]  # the first is gone

    engine(f'"$ENGINE" tag {rebuilt} {other}', tmp_path)  # the second image now has another name too
    old, third = _build(tmp_path, "third", rebuilt)
    assert old == second != third
    assert engine(f"set -- {second} {third}\n{exists}", tmp_path).split() == ["yes", "yes"]  # still named: kept
