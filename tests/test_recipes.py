"""Every YAML recipe under recipes/ parses into its config dataclass (dispatch: sedac.bench.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sedac.bench.config import RECIPE_KINDS, load_recipe, recipe_class

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    names = {str(p.relative_to(p.parents[1])) for p in RECIPES}
    assert {"smollm2-135m/bench_speed.yaml", "smollm2-135m/quickstart.yaml", "qwen2.5-7b/bench_speed.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_parses(path):
    cfg = load_recipe(path)
    assert type(cfg) in {recipe_class(k) for k in RECIPE_KINDS}
