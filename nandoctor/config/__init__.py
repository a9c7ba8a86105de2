"""Config: schema (dataclasses), loading/validation, and the `--set`/patch path syntax."""

from nandoctor.config.load import dump_config, from_mapping, load_config, to_mapping
from nandoctor.config.schema import Config

__all__ = ["Config", "dump_config", "from_mapping", "load_config", "to_mapping"]
