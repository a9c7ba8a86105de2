"""Apply a fix patch to the user's YAML text, keeping their comments, order and style where possible.

Each patch entry is tried as a small text edit (replace an existing scalar; add a key to an
existing mapping); an edit is kept only if the edited text parses to exactly the patched mapping.
When no safe edit exists the file is re-emitted from the patched mapping, with its leading comment
block kept. Either way the result is verified by parsing before it is returned.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from nandoctor.config import paths


def patch_text(text: str, patch: dict[str, Any]) -> tuple[str, bool]:
    """(patched text, whether the original formatting was kept)."""
    raw = yaml.safe_load(text) or {}
    target = paths.apply_all(raw, patch)
    current, current_raw, kept = text, raw, True
    for key, value in patch.items():
        want = paths.apply(current_raw, key, value)
        edited = _edit(current, key, value, want)
        if edited is None:
            kept = False
            break
        current, current_raw = edited, want
    if kept and yaml.safe_load(current) == target:
        return current, True
    dumped = yaml.safe_dump(target, sort_keys=False, default_flow_style=None)
    return _leading_comments(text) + dumped, False


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _edit(text: str, key: str, value: Any, want: dict) -> str | None:
    """One verified text edit for `key`, or None."""
    parts = paths.split_path(key)
    leaf = parts[-1]
    new = _scalar(value)
    candidates = []
    # 1. replace an existing `leaf: old` wherever it occurs once (block or flow style)
    pattern = re.compile(rf"(?:^|[\s{{,]){re.escape(leaf)}\s*:\s*(?P<old>[^,}}\n#]*?)\s*(?:[,}}]|#|$)",
                         re.MULTILINE)
    for m in pattern.finditer(text):
        candidates.append(text[:m.start("old")] + new + text[m.end("old"):])
    # 2. add `leaf: value` to its parent mapping
    if len(parts) >= 2 and not parts[-2].isdigit() and parts[-2] != "*":
        parent = re.escape(parts[-2])
        flow = re.compile(rf"^(?P<indent>\s*){parent}\s*:\s*\{{(?P<body>[^\n}}]*)\}}", re.MULTILINE)
        for m in flow.finditer(text):
            body = m.group("body").rstrip()
            sep = ", " if body.strip() else ""
            candidates.append(text[:m.start("body")] + body + f"{sep}{leaf}: {new}" + text[m.end("body"):])
        block = re.compile(rf"^(?P<indent>[ \t]*){parent}\s*:[ \t]*(#.*)?\n(?P<child>[ \t]+)", re.MULTILINE)
        for m in block.finditer(text):
            insert = m.start("child")
            candidates.append(text[:insert] + f"{m.group('child')}{leaf}: {new}\n" + text[insert:])
    # 3. a whole new top-level section
    if len(parts) == 2 and parts[0] not in (yaml.safe_load(text) or {}):
        candidates.append(text.rstrip("\n") + f"\n{parts[0]}:\n  {leaf}: {new}\n")
    for cand in candidates:
        try:
            if yaml.safe_load(cand) == want:
                return cand
        except yaml.YAMLError:
            continue
    return None


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "\n".join(lines).rstrip() + "\n" if any(line.strip() for line in lines) else ""

