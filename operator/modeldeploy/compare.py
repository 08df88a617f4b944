"""Does a live object already say everything a desired manifest says?

The operator skips a server-side apply whose outcome would be a no-op, so a converged cluster sees no
write requests from it at all. The live object carries server defaults (extra fields, extra keys in list
items), canonicalised quantities (`1000m` → `1`, `1024Mi` → `1Gi`) and int-or-string fields in either form,
so the comparison is a semantic subset check rather than equality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy.quantity import parse_quantity

# Keys that identify an item of a list of objects (the merge keys of the lists we write), in order of
# preference. Lists without one are compared item by item.
_ITEM_KEYS = ("name", "mountPath", "containerPort", "port", "uid")


def scalars_equal(desired: Any, live: Any) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return False
    if isinstance(desired, int | str) and isinstance(live, int | str):
        try:
            return parse_quantity(desired) == parse_quantity(live)
        except ValueError:
            return False
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(desired) == float(live)
    return False


def _item_key(items: Sequence[Any]) -> str | None:
    if not items or not all(isinstance(item, Mapping) for item in items):
        return None
    for key in _ITEM_KEYS:
        values = [item.get(key) for item in items]
        if all(value is not None for value in values) and len(set(map(repr, values))) == len(values):
            return key
    return None


def _list_subset(desired: Sequence[Any], live: Sequence[Any]) -> bool:
    key = _item_key(desired)
    if key is not None:
        # A keyed list (containers, env, ports, volumes...): every desired item must be present. Extra
        # live items belong to other field managers; a server-side apply would keep them anyway.
        by_key = {repr(item.get(key)): item for item in live if isinstance(item, Mapping)}
        return all(repr(item[key]) in by_key and is_subset(item, by_key[repr(item[key])]) for item in desired)
    # An atomic list (args, tolerations, metrics): same length, item by item.
    return len(desired) == len(live) and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))


def is_subset(desired: Any, live: Any) -> bool:
    """True when applying `desired` over `live` would change nothing."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and is_subset(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list | tuple):
        if not isinstance(live, list | tuple):
            return False
        return _list_subset(desired, live)
    return scalars_equal(desired, live)
