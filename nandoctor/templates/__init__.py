"""Commented starter configs written by `nandoctor init`."""

from importlib import resources

TEMPLATES = ("classification", "regression")


def render(template: str, name: str, file: str) -> str:
    text = resources.files(__name__).joinpath(f"{template}.yaml").read_text(encoding="utf-8")
    return text.replace("{name}", name).replace("{file}", file)
