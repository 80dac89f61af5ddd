"""Recipes: TOML files of a config dataclass's fields (``TrainConfig``, ``DetectConfig``, ``SearchConfig``).

Shipped ones live in the package (``mnv4/recipes/*.toml`` for training, ``mnv4/recipes/detection/*.toml`` for
detection) and are named without the suffix; any other ``.toml`` path works too. Values layer one way everywhere:
the dataclass's defaults < the recipe < explicit overrides, where an override of ``None`` means "not given" (a CLI
flag left unset keeps the recipe's value). ``parse_set`` reads the ``--set FIELD=VALUE`` overrides the CLIs take.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def recipe_folder(*parts: str):
    """A folder of shipped recipes in the package: ``recipe_folder()`` (training), ``recipe_folder('detection')``."""
    return resources.files("mnv4").joinpath("recipes", *parts)


def shipped_recipes(folder) -> list[str]:
    """The names of the recipes in ``folder`` (a ``recipe_folder``)."""
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_recipe(
    name_or_path: str, folder, fields: Collection[str], kind: str, label: str = "recipe"
) -> dict[str, Any]:
    """A recipe's values: a shipped name in ``folder`` or a path to a TOML file. Every key must be one of ``fields``
    (the ``kind`` dataclass's, named in the error; ``label`` names the recipe's kind, e.g. 'detection recipe')."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        names = shipped_recipes(folder)
        if name_or_path not in names:
            raise UserError(f"unknown {label} {name_or_path!r}; shipped: {', '.join(names)} (or a .toml path)")
        text = folder.joinpath(f"{name_or_path}.toml").read_text()
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"recipe {name_or_path!r} is not valid TOML: {err}") from None
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"recipe {name_or_path!r} has unknown keys {unknown}; valid keys are the {kind} fields")
    return values


def layered_values(
    recipe_values: Mapping[str, Any], overrides: Mapping[str, Any], fields: Collection[str], kind: str
) -> dict[str, Any]:
    """The recipe's values with ``overrides`` on top; ``None`` overrides are skipped, unknown names refused."""
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UserError(f"unknown {kind} fields {unknown}")
    return {**recipe_values, **{k: v for k, v in overrides.items() if v is not None}}


def parse_set(items: Iterable[str], fields: Collection[str], kind: str) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items -> ``{field: value}``: the value as TOML (``1e-3``, ``true``, ``[1, 2]``,
    ``'text'``), or the bare text when it is not TOML (``--set device=cuda``); dashes in names read as underscores."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD a {kind} field")
        try:
            values[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = value
    return values
