"""Stage command options: the ``--options JSON|@FILE`` / ``--config FILE`` flags every stage takes, and
repeated ``NAME=VALUE`` flags.

A stage validates only the config sections it uses (:func:`stage_options`), against the section models of
:mod:`taskprune.config`; the Snakemake rules pass those sections as an options file. Imported by the stage
modules (torch-free).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from taskprune.config import ModelConfig, TaskConfig, load_config, validate_section
from taskprune.errors import ConfigError


def parse_assignments(values: Sequence[str], flag: str, expected: str = "NAME=VALUE") -> dict[str, str]:
    """Repeated ``--flag NAME=VALUE`` command-line arguments -> {name: value}; a malformed one is a one-line
    :class:`ConfigError` naming the flag and the form ``expected`` (e.g. ``MODEL=TASK``)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} {value!r}: expected {expected}")
        out[name] = rest
    return out


def add_config_arguments(parser: Any) -> None:
    """``--options JSON`` (what Snakemake rules pass) or ``--config FILE`` (a whole config, for humans)."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--options",
        metavar="JSON|@FILE",
        help="JSON object of the config sections this stage uses, e.g. '{\"stats\": {\"token_budget\": 4096}}', "
        "or @FILE holding one (the Snakemake rules pass .snakemake/taskprune/options/<sections>-<hash>.json); unspecified "
        "keys take their defaults",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        help="read the sections from a whole config YAML instead (repeatable; later files override)",
    )


def read_options(text: str | None) -> tuple[dict[str, Any], str]:
    """The JSON object of config sections a stage's ``--options`` names, inline or as ``@FILE`` (what the
    Snakemake rules pass), and how to name it in an error: ``(sections, source)``."""
    text = text or "{}"
    source = "--options"
    if text.startswith("@"):
        source = f"--options {text}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the options file ({exc.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object of config sections")
    return raw, source


def stage_options(args: Any, sections: dict[str, type[BaseModel] | Any], model: str | None = None) -> Any:
    """Validate the sections a stage needs and return them as attributes of a namespace.

    ``sections`` maps a section name to its pydantic model (or to a plain default value for scalars such
    as ``device``). With ``--config FILE``, sections are read from the validated whole config; the special
    section ``model`` is ``config.models[model]`` and ``task`` is the model's target task config.
    """
    from types import SimpleNamespace

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        cfg = load_config(*args.config)
        data = cfg.model_dump()
        if model is not None:
            if model not in cfg.models:
                raise ConfigError(f"--model '{model}' is not in the config's models ({', '.join(cfg.models)})")
            data["model"] = data["models"][model]
        raw = data
        source = ", ".join(args.config)
    else:
        raw, source = read_options(getattr(args, "options", None))
        unknown = [k for k in raw if k not in sections]
        if unknown:
            guess = difflib.get_close_matches(unknown[0], list(sections), n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise ConfigError(
                f"{source}: unknown section '{unknown[0]}'{hint} (this stage uses: {', '.join(sections)})"
            )
    for name, spec in sections.items():
        if isinstance(spec, type) and issubclass(spec, BaseModel):
            if name not in raw and spec in (ModelConfig, TaskConfig):
                raise ConfigError(f"{source}: missing required section '{name}'")
            values[name] = validate_section(raw.get(name, {}), spec, name, source)
        else:
            values[name] = raw.get(name, spec)
    if "device" in values and values["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{source}: key 'device' has bad value {values['device']!r}: expected auto, cpu or cuda")
    return SimpleNamespace(**values)
