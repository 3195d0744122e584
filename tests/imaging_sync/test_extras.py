"""The optional extras: one list of what each provides, equal to pyproject.toml, and the one refusal."""

from __future__ import annotations

import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from imaging_sync import extras
from imaging_sync.errors import ConfigError

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.mark.parametrize("extra", sorted(extras.EXTRA_MODULES))
def test_each_module_of_an_extra_comes_from_a_requirement_that_extra_declares(extra: str) -> None:
    declared = {_normal(Requirement(text).name) for text in PYPROJECT["project"]["optional-dependencies"][extra]}
    owners = packages_distributions()
    for module in extras.EXTRA_MODULES[extra]:
        assert {_normal(d) for d in owners[module]} & declared, f"{module} is not provided by a requirement of [{extra}]"
    base = {_normal(Requirement(text).name) for text in PYPROJECT["project"]["dependencies"]}
    assert not declared & base, "a package of an extra is not also a base dependency"


def test_an_installed_extra_is_required_silently() -> None:
    assert extras.missing_modules("demo") == []  # the tests run with [dev,demo]
    extras.require_extra("demo", key="storage.embedded", purpose="the embedded S3")


def test_a_missing_extra_is_a_config_error_naming_the_key_the_modules_and_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRA_MODULES, "demo", ("moto", "imaging_sync_no_such_module"))
    with pytest.raises(ConfigError) as caught:
        extras.require_extra("demo", key="storage.embedded", purpose="the embedded S3")
    assert caught.value.key == "storage.embedded"
    message = str(caught.value)
    assert "the embedded S3 needs the 'demo' extra" in message
    assert "imaging_sync_no_such_module" in message and "moto" not in message.split("(no ")[1].split(")")[0]
    assert "pip install 'imaging-sync[demo]'" in message
