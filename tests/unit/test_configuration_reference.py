from pathlib import Path

from cli.settings_reference import SETTINGS_CLASSES, environment_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme():
    readme = README.read_text()
    missing = [var for _, cls in SETTINGS_CLASSES for var, _, _ in environment_variables(cls) if var not in readme]
    assert not missing, f"README lacks: {missing} (paste `vigil config` into it)"


def test_every_setting_has_a_description():
    undocumented = [var for _, cls in SETTINGS_CLASSES for var, _, meaning in environment_variables(cls) if not meaning]
    assert not undocumented
