from pathlib import Path

import pytest

from rstar_core.config import SearchConfig, config_from_mapping, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(path):
    config = load_config(path)
    assert config.c_puct == 2.0


def test_recipes_follow_the_reference_values():
    r1, r3, ev = (load_config(CONFIGS / f"{n}.yaml") for n in ("round1", "round3", "eval"))
    assert (r1.expansion_width, r1.rollouts, r1.max_depth, r1.temperature, r1.errors_threshold) == (12, 8, 16, 0.7, 2)
    assert r3.use_ppm_init and r3.terminal_reward == "ground_truth" and r3.errors_threshold == 1
    assert (ev.expansion_width, ev.rollouts, ev.terminal_reward) == (32, 12, "ppm")
    assert load_config(CONFIGS / "round4.yaml").hard_extra_rollouts == 64


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown config key\\(s\\) rollout"):
        config_from_mapping({"rollout": 3})


@pytest.mark.parametrize("field,value", [
    ("rollouts", -1), ("expansion_width", 0), ("c_puct", -1.0), ("top_p", 0.0),
    ("terminal_reward", "oracle"), ("max_depth", 2.5), ("prompt_format", "fancy"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SearchConfig(**{field: value})


def test_overrides_win_and_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollouts: 3\n")
    assert load_config(path, rollouts=5).rollouts == 5
    path.write_text("rollouts: [\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(path)
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.yaml")
