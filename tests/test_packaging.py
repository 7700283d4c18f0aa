"""The library asks for version ranges (a user's torch stays); the verified set is pinned in constraints.txt."""
import os
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def _constraints() -> dict:
    pins = {}
    for line in open(os.path.join(REPO, "constraints.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _requirements():
    p = _project()
    reqs = [Requirement(r) for r in p["dependencies"]]
    return reqs + [Requirement(r) for extra in p["optional-dependencies"].values() for r in extra]


def test_library_requirements_are_ranges_not_pins():
    for r in _requirements():
        assert not any(s.operator in ("==", "===") for s in r.specifier), f"{r} pins a version: use constraints.txt"


@pytest.mark.parametrize("torch_version", ["2.11.0", "2.12.1", "2.14.1", "2.15.0"])
def test_another_torch_is_kept(torch_version):
    """pip leaves an installed requirement alone when it satisfies the specifier (upgrade-strategy only-if-needed)."""
    torch_req = next(r for r in _requirements() if r.name == "torch")
    assert Version(torch_version) in torch_req.specifier


def test_the_pinned_set_satisfies_the_ranges():
    pins = _constraints()
    for r in _requirements():
        if r.name.lower() in pins:
            assert Version(pins[r.name.lower()]) in r.specifier, (r, pins[r.name.lower()])
    assert {"torch", "h5py", "numpy"} <= set(pins)


@pytest.mark.skipif(not os.environ.get("FASTISM_PINNED_ENV"), reason="only in the environment scripts/test.sh builds")
def test_the_test_environment_is_the_pinned_set():
    for name, version in _constraints().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert Version(installed) == Version(version), f"{name} {installed} installed, {version} pinned"
