"""``nni.utils.merge_parameter``, which NNI's examples use to override argparse defaults."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["merge_parameter"]


def _compatible(key: str, base: Any, value: Any) -> Any:
    if base is None or type(base) is type(value):
        return value
    if isinstance(base, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise TypeError(
        f"Expected '{key}' in override parameters to have type '{type(base).__name__}', "
        f"but found '{type(value).__name__}'."
    )


def merge_parameter(base_params: Any, override_params: dict[str, Any] | None) -> Any:
    """Update ``base_params`` (a dict or an argparse Namespace) in place from ``override_params``.

    Every key must already exist in ``base_params`` (ValueError otherwise) and keep its type
    (TypeError otherwise; an int where a float is expected is converted). Returns ``base_params``.
    """
    if override_params is None:
        return base_params
    is_dict = isinstance(base_params, dict)
    for key, value in override_params.items():
        if is_dict:
            if key not in base_params:
                raise ValueError(f"Key '{key}' not found in base parameters.")
            base_params[key] = _compatible(key, base_params[key], value)
        else:
            if not hasattr(base_params, key):
                raise ValueError(f"Key '{key}' not found in base parameters.")
            setattr(base_params, key, _compatible(key, getattr(base_params, key), value))
    return base_params
