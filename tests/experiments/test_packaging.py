"""A non-editable install ships every config and sweep YAML, with no setuptools data warnings."""

from __future__ import annotations

import configparser
import fnmatch

from setuptools import find_namespace_packages

from tests.experiments.conftest import REPO


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def test_every_yaml_under_experiments_is_package_data() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["options"]["packages"].strip() == "find_namespace:"
    find = setup["options.packages.find"]
    packages = set(
        find_namespace_packages(
            str(REPO), include=_lines(find["include"]), exclude=_lines(find.get("exclude", ""))
        )
    )
    patterns = {key: _lines(value) for key, value in setup["options.package_data"].items()}
    yamls = [
        *(REPO / "experiments" / "configs").rglob("*.yaml"),
        *(REPO / "experiments" / "sweeps").glob("*.yaml"),
    ]
    assert len(yamls) > 10
    for path in yamls:
        package = ".".join(path.parent.relative_to(REPO).parts)
        assert package in packages, f"{package} is not a package: its YAML files would be dropped"
        globs = patterns.get(package, []) + patterns.get("*", [])
        assert any(fnmatch.fnmatch(path.name, g) for g in globs), path
    assert not any("__pycache__" in p for p in packages)
    assert "bench" in setup["options.extras_require"]
    assert "liger-kernel" in setup["options.extras_require"]["bench"]
