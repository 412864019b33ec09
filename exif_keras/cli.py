"""Helpers shared by the command-line tools (train, export, predict, benchmark)."""

from __future__ import annotations

from absl import flags


def shared_flag(define, name: str, *args, **kwargs):
    """Defines flag ``name``, or reuses it when another tool's module already defined it.

    The tools share flag names (--model_dir, --export_dir, --version, --batch_size, ...) and are
    imported into one process in any order (train exports at its end; tests import them all), so a
    flag defined here allows a later module to redefine it (``allow_override``); the holders read
    the flag by name and so follow the definition that won."""
    if name in flags.FLAGS:
        flags.declare_key_flag(name)
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
    return define(name, *args, allow_override=True, **kwargs)
