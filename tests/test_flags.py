"""Tier 1: flags made from config dataclasses (cluster.cli.flags): one flag per field with the
field's default and docstring, and a setting the config refuses exits as a bad flag does."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from cluster.cli.flags import add_config_flags, parse_config


@dataclass(frozen=True, kw_only=True)
class Settings:
    image_size: int = 64
    """Model input side."""
    rate: float | None = None
    """Cap (none: uncapped)."""
    quick: bool = False
    """Fewer runs."""
    mode: str = "a"
    """The mode."""

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError("--image-size must be >= 1")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p, Settings, rate={"type": float}, mode={"choices": ["a", "b"]})
    return p


def test_every_field_is_a_flag_with_its_default_and_help():
    assert parse_config(parser(), Settings, []) == Settings()
    cfg = parse_config(parser(), Settings, ["--image-size", "32", "--rate", "1.5", "--quick",
                                            "--mode", "b"])
    assert cfg == Settings(image_size=32, rate=1.5, quick=True, mode="b")
    text = parser().format_help()
    assert "--image-size IMAGE_SIZE" in text and "Model input side." in text
    assert "Cap (none: uncapped)." in text and "{a,b}" in text


def test_a_refused_setting_exits_with_status_two_and_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(parser(), Settings, ["--image-size", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --image-size must be >= 1\n"
    with pytest.raises(AttributeError, match=r"no fields \['size'\]"):
        add_config_flags(argparse.ArgumentParser(), Settings, size={"type": int})
