"""The result type every engine returns and every front end renders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """One detected object: class, score and box in original image pixels (x1, y1, x2, y2)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        """Return the JSON shape used by the API and the CLI."""
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
        }
