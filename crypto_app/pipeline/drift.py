"""Schema drift: fields that appear, disappear or change type relative to the previous run."""
from __future__ import annotations

SAMPLE = 5  # records per batch looked at: enough to see the shape, cheap on million-row files


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def field_types(record: dict, prefix: str = "") -> dict[str, str]:
    """Flattened field -> kind of one raw record (nested objects become dotted names)."""
    kinds = {}
    for key, value in record.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            kinds.update(field_types(value, prefix=f"{name}."))
        else:
            kinds[name] = _kind(value)
    return kinds


def observe(seen: dict[str, str], records: list[dict]) -> None:
    """Fold the field kinds of a batch's first records into `seen` (null never hides a real kind)."""
    for record in records[:SAMPLE]:
        if not isinstance(record, dict):
            continue
        for name, kind in field_types(record).items():
            if seen.get(name) in (None, "null"):
                seen[name] = kind


def detect_drift(previous: dict | None, current: dict) -> dict | None:
    """What changed between the previous run's fields and this run's; None if nothing (or no history)."""
    if not previous or not current:
        return None
    added = sorted(set(current) - set(previous))
    removed = sorted(set(previous) - set(current))
    changed = {name: [previous[name], current[name]] for name in sorted(set(previous) & set(current))
               if "null" not in (previous[name], current[name]) and previous[name] != current[name]}
    if not (added or removed or changed):
        return None
    return {"added": added, "removed": removed, "type_changed": changed}
