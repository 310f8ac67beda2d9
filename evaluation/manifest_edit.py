"""Writing a calibrated accept rule (and a fitted pre-route score) back into the user's manifest, keeping its layout.

ruamel.yaml's round-trip mode keeps comments, key order, quoting and the
other documents of the file; only the first tier's `accept` block (and its
`preRoute`) changes, and a comment above it says where the numbers came from. The file is
replaced atomically: a failed write leaves the old one whole.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

from kascade.api.modelcascade import Accept
from kascade.api.pre_route import PreRoute


def _load(path: Path) -> tuple[Any, list[Any]]:
    """The round-trip loader (the file's own indentation) and the file's documents."""
    from ruamel.yaml import YAML

    text = path.read_text(encoding="utf-8")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(**_indentation(text))
    return yaml, list(yaml.load_all(text))


def _tier(documents: list[Any], tier_name: str) -> Any:
    cascade = next(d for d in documents if isinstance(d, dict) and d.get("kind") == "ModelCascade")
    return next(t for t in cascade["spec"]["tiers"] if t.get("name") == tier_name)


def write_accept(path: Path, tier_name: str, accept: Accept, note: str) -> None:
    """Set tier `tier_name`'s accept rule in the ModelCascade document of `path` to `accept`."""
    from ruamel.yaml.comments import CommentedMap

    yaml, documents = _load(path)
    tier = _tier(documents, tier_name)
    block = tier.get("accept")
    rule = accept.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    # Method and threshold are always spelled out, and a key the user wrote stays written, even at its default.
    full = accept.model_dump(mode="json", by_alias=True, exclude_none=True)
    rule = {"method": full["method"], **rule, "threshold": accept.threshold}
    for key in ("span", "quantile"):
        if (
            isinstance(block, dict)
            and key in block
            and key in full
            and (key != "quantile" or full["method"] == "quantile")
        ):
            rule[key] = full[key]
    if full["method"] == "quantile":
        rule["quantile"] = full["quantile"]
    if not isinstance(block, CommentedMap):
        block = CommentedMap()
        tier["accept"] = block
    for key in [k for k in block if k not in rule]:
        del block[key]
    for key, value in rule.items():
        block[key] = value
    tier.yaml_set_comment_before_after_key("accept", before=note, indent=_indent_of(tier))
    out = io.StringIO()
    yaml.dump_all(documents, out)
    _replace(path, _without_stale_notes(out.getvalue(), note))


def write_pre_route(path: Path, tier_name: str, pre_route: PreRoute, note: str) -> None:
    """Set tier `tier_name`'s `preRoute` in the ModelCascade document of `path` (after its accept rule when new).

    Every field is spelt out, the long `weights` last, on one line (base64 has
    no space to fold at)."""
    from ruamel.yaml.comments import CommentedMap

    yaml, documents = _load(path)
    tier = _tier(documents, tier_name)
    fields = pre_route.model_dump(mode="json", by_alias=True, exclude_none=True)
    block = CommentedMap((key, value) for key, value in fields.items() if key != "weights")
    block["weights"] = fields["weights"]
    if "preRoute" in tier:
        tier["preRoute"] = block
    else:
        keys = list(tier)
        after = keys.index("accept") + 1 if "accept" in keys else len(keys)
        tier.insert(after, "preRoute", block)
    tier.yaml_set_comment_before_after_key("preRoute", before=note, indent=_indent_of(tier))
    out = io.StringIO()
    yaml.dump_all(documents, out)
    _replace(path, _without_stale_notes(out.getvalue(), note))


def _without_stale_notes(text: str, note: str) -> str:
    """A second calibration leaves one note: a note line followed by another note line is the older one."""
    marker = note.split(" on ")[0]
    lines = text.splitlines(keepends=True)
    kept = [
        line
        for line, after in zip(lines, [*lines[1:], ""], strict=True)
        if not (line.lstrip().startswith("# " + marker) and after.lstrip().startswith("# " + marker))
    ]
    return "".join(kept)


def _indentation(text: str) -> dict[str, int]:
    """The file's own indentation: mapping step, and how far list dashes sit under their key (kubectl's style
    indents them, `- ` under `key:` two columns in; PyYAML's does not)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for before, line in itertools.pairwise(lines):
        if line.lstrip().startswith("- ") and before.rstrip().endswith(":"):
            offset = (len(line) - len(line.lstrip())) - (len(before) - len(before.lstrip()))
            return {"mapping": 2, "sequence": offset + 2, "offset": offset}
    return {"mapping": 2, "sequence": 2, "offset": 0}


def _indent_of(tier: object) -> int:
    # A tier's keys sit under "    - name:" in the usual layout: the list item's indentation plus 2.
    column = getattr(getattr(tier, "lc", None), "col", None)
    return column if isinstance(column, int) else 6


def _replace(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
