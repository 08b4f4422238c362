"""Per-request detection options (threshold, classes, max_detections): parse, check, apply."""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app
from flask import request

from .detection import Detection
from .errors import DRAIN_FACTOR
from .errors import ApiError
from .errors import drain_body

# Upper bound of max_detections: far above what one image yields at any threshold (the
# postprocess keeps at most a few thousand candidates), low enough to catch typos.
MAX_DETECTIONS_LIMIT = 1000
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_SHOWN_LABELS = 8  # known labels named in an "unknown label" error


@dataclass(frozen=True)
class Options:
    """What one request asked for, checked: effective threshold, class subset, result cap.

    `threshold` is never below the server's floor (its configured threshold): scores under
    the floor are never computed, so a lower request is raised to it, and the reply says so.
    A detection is kept when its score is above the threshold, as the model's own filter does.
    """

    threshold: float
    classes: frozenset[str] | None = None  # None = every class
    max_detections: int | None = None  # None = no cap


def parse_threshold(raw: str | float | None, *, floor: float, field: str = "threshold") -> float:
    """Return the effective threshold: `raw` in [0, 1] raised to `floor`; None gives `floor`.

    :raise ApiError 400: not a number, NaN, or outside [0, 1] (the message names `field`)
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return floor
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ApiError(
            400, f"{field} must be a number between 0 and 1, got {str(raw)[:40]!r}"
        ) from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ApiError(400, f"{field} must be a number between 0 and 1, got {str(raw)[:40]!r}")
    return max(value, floor)


def parse_classes(raw: Iterable[str], labels: Sequence[str], *, field: str = "classes"):
    """Return the requested labels (the model's spelling) or None when none were given.

    Each value may hold several comma-separated labels; matching ignores case and the
    whitespace around each label.
    :raise ApiError 400: a label the model does not know (named, with known ones)
    """
    by_key = {label.casefold(): label for label in labels}
    chosen = set()
    for value in raw:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            label = by_key.get(name.casefold())
            if label is None:
                shown = ", ".join(labels[:_SHOWN_LABELS])
                raise ApiError(
                    400,
                    f"{field}: unknown label {name[:40]!r}; the model knows {len(labels)} "
                    f"labels ({shown}, ...; see /openapi.json or coco.names)",
                )
            chosen.add(label)
    return frozenset(chosen) if chosen else None


def parse_max_detections(raw: str | int | None, *, field: str = "max_detections") -> int | None:
    """Return the cap as an int in 1..MAX_DETECTIONS_LIMIT, or None when not given.

    :raise ApiError 400: not a whole number or out of range (the message names `field`)
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_DETECTIONS_LIMIT:
        raise ApiError(
            400,
            f"{field} must be a whole number from 1 to {MAX_DETECTIONS_LIMIT}, "
            f"got {str(raw)[:40]!r}",
        )
    return value


def _single(values: Mapping[str, list[str]], field: str) -> str | None:
    """Return the one value of `field`, None when absent; 400 when it was sent twice."""
    given = values.get(field) or []
    if len(given) > 1:
        raise ApiError(400, f"{field} was given {len(given)} times; send it once")
    return given[0] if given else None


def parse_options(
    values: Mapping[str, list[str]],
    *,
    floor: float,
    labels: Sequence[str],
    threshold_field: str = "threshold",
) -> Options:
    """Check the option fields of a request (name -> list of values) and return Options.

    :param floor: the server's configured score threshold (the lowest allowed)
    :param labels: the model's class names
    :param threshold_field: the field read as the threshold (DeepStack: `min_confidence`)
    :raise ApiError 400: a bad value, naming the field
    """
    return Options(
        threshold=parse_threshold(
            _single(values, threshold_field), floor=floor, field=threshold_field
        ),
        classes=parse_classes(values.get("classes") or [], labels),
        max_detections=parse_max_detections(_single(values, "max_detections")),
    )


def request_values() -> dict[str, list[str]]:
    """Return the request's query args plus its form fields (form bodies only), name -> values."""
    values: dict[str, list[str]] = {}
    sources = [request.args]
    if request.mimetype in FORM_TYPES:
        sources.append(request.form)
    for source in sources:
        for key in source:
            values.setdefault(key, []).extend(source.getlist(key))
    return values


def request_options(detector, *, threshold_field: str = "threshold") -> Options:
    """Parse this request's options against a loaded detector (its threshold and class names).

    On a bad option the unread upload is read and dropped before the 400 goes out (as for a
    413): a keep-alive client's next request must not start inside this one's body.
    """
    try:
        return parse_options(
            request_values(),
            floor=float(detector.threshold),
            labels=list(detector.class_names),
            threshold_field=threshold_field,
        )
    except ApiError:
        drain_body(DRAIN_FACTOR * (current_app.config.get("MAX_CONTENT_LENGTH") or 0))
        raise


def apply_options(detections: Iterable[Detection], options: Options) -> list[Detection]:
    """Keep detections scored above the threshold and in the classes, best first, then cut.

    Filtering after class-wise NMS equals running NMS at the higher threshold: a box is only
    suppressed by a higher-scored box of its class, which passes any threshold it passes.
    """
    kept = [
        d
        for d in detections
        if d.score > options.threshold and (options.classes is None or d.label in options.classes)
    ]
    kept.sort(key=lambda d: d.score, reverse=True)
    if options.max_detections is not None:
        kept = kept[: options.max_detections]
    return kept
