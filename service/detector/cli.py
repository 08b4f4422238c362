"""The `detector` command: detect objects in images, fetch weights, serve the web app."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
import time
import traceback
from pathlib import Path

from detector import __version__
from detector import config as config_module

_DEBUG = "log the model loading and show tracebacks on errors"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VERSION = f"detector {__version__}"


class DeprecatedAlias(argparse.Action):
    """Store like the option's new name does, and warn on stderr that this name is going away."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs) -> None:
        self.replacement = replacement
        kwargs.setdefault("help", f"deprecated name of {replacement}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated; use {self.replacement}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give a parser `--version` (prints `detector X.Y.Z` and exits)."""
    parser.add_argument("--version", action="version", version=VERSION)


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand except `serve` (forwarded as is)."""
    parser = argparse.ArgumentParser(
        prog="detector",
        description="YOLOv3 object detection. `detector serve --help` shows the server's options.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = sub.add_parser("detect", help="detect objects in images")
    detect.add_argument("images", nargs="+", metavar="IMAGE")
    detect.add_argument(
        "--config", help="detector TOML file, as the service reads it (default: $DETECTOR_CONFIG)"
    )
    detect.add_argument(
        "--model", help="model name from the weights manifest (yolov3-tiny, yolov3)"
    )
    detect.add_argument("--size", type=int, help="network input size, e.g. 416 or 608")
    detect.add_argument("--engine", choices=config_module.ENGINES, help="inference engine")
    detect.add_argument(
        "--precision",
        choices=config_module.PRECISIONS,
        help="precision (auto: bf16 on CPUs with native bf16; int8: openvino)",
    )
    detect.add_argument(
        "--inference-threads",
        dest="threads",
        type=int,
        help="inference threads (default: every core)",
    )
    detect.add_argument(
        "--threads",
        dest="threads",
        type=int,
        action=DeprecatedAlias,
        replacement="--inference-threads",
    )
    detect.add_argument("--threshold", type=float, help="score threshold (default 0.25)")
    detect.add_argument("--nms-threshold", type=float, help="NMS IoU threshold (default 0.45)")
    detect.add_argument("--json", action="store_true", help="one JSON document per image")
    detect.add_argument("--out", help="write annotated images: a file (one image) or a folder")
    detect.add_argument("--weights-dir", help="folder of the manifest's weights files")
    detect.add_argument("--cfg", help="custom model: darknet .cfg file")
    detect.add_argument("--weights", help="custom model: darknet .weights file")
    detect.add_argument("--names", help="custom model: class names, one per line")
    detect.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)

    fetch = sub.add_parser("fetch-weights", help="download and verify a model's weights")
    fetch.add_argument("name", help="model name from the weights manifest")
    fetch.add_argument("--dest", default="weights", help="target folder (default: weights)")
    fetch.add_argument(
        "--from", dest="source", metavar="URL_OR_FILE", help="fetch from this URL or local file"
    )
    fetch.add_argument("--manifest", help="weights manifest file (default: the packaged one)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)

    prepare = sub.add_parser(
        "prepare", help="build the configured model's OpenVINO cache (the provisioning runs it)"
    )
    prepare.add_argument("--model", help="model name from the weights manifest")
    prepare.add_argument("--size", type=int, help="network input size, e.g. 416 or 608")
    prepare.add_argument(
        "--precision",
        choices=config_module.ENGINE_PRECISIONS["openvino"],
        action="append",
        help="precision to prepare (repeatable; default: those the configured engine may use)",
    )
    prepare.add_argument("--weights-dir", help="folder of the manifest's weights files")
    prepare.add_argument("--cfg", help="custom model: darknet .cfg file")
    prepare.add_argument("--weights", help="custom model: darknet .weights file")
    prepare.add_argument("--names", help="custom model: class names, one per line")
    prepare.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)

    sub.add_parser("serve", help="run the web service (options: detector serve --help)")
    for subparser in sub.choices.values():
        add_version(subparser)
    return parser


def _settings(args: argparse.Namespace) -> config_module.Config:
    """Return the configuration (DETECTOR_CONFIG and DETECTOR_* apply) with flags on top."""
    base = config_module.load(getattr(args, "config", None))  # as the service: file + env
    overrides = {
        "model": args.model,
        "size": args.size,
        "engine": getattr(args, "engine", None),
        "precision": args.precision if isinstance(args.precision, str) else None,
        "threads": getattr(args, "threads", None),
        "threshold": getattr(args, "threshold", None),
        "nms_threshold": getattr(args, "nms_threshold", None),
        "weights_dir": args.weights_dir,
        "cfg": args.cfg,
        "weights": args.weights,
        "names": args.names,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.model and not (args.cfg or args.weights or args.names):
        overrides.update(cfg="", weights="", names="")  # a named model replaces a custom one
    values = {**dataclasses.asdict(base), **overrides}
    return config_module.from_mapping(values)


def _out_path(out: str | None, image: Path, many: bool) -> Path | None:
    """Return where the annotated copy of `image` goes: the file itself or FOLDER/NAME.jpg."""
    if not out:
        return None
    target = Path(out)
    if not many and target.suffix.lower() in IMAGE_SUFFIXES and not target.is_dir():
        return target
    target.mkdir(parents=True, exist_ok=True)
    return target / f"{image.stem}.detections.jpg"


def _table(result: dict) -> str:
    """Format one image's result as a plain-text table."""
    timing = result["timing_ms"]
    lines = [
        f"{result['image']}: {len(result['detections'])} object(s), "
        f"{result['width']}x{result['height']}, {result['model']} "
        f"({timing.get('total', 0):.0f} ms)"
    ]
    if result["detections"]:
        lines.append(f"  {'label':<16} {'score':>6}  {'x1':>7} {'y1':>7} {'x2':>7} {'y2':>7}")
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        box = f"{x1:>7.1f} {y1:>7.1f} {x2:>7.1f} {y2:>7.1f}"
        lines.append(f"  {det['label']:<16} {det['score']:>6.3f}  {box}")
    return "\n".join(lines)


def _detect(args: argparse.Namespace) -> int:
    """Run the detector over each image and print a table or JSON lines."""
    from detector import drawing
    from detector import imaging
    from detector.machine import cpu_count
    from detector.manifest import load_configured

    for name in args.images:  # fail before the model load, which takes seconds
        if not Path(name).is_file():
            raise FileNotFoundError(f"image {name} does not exist or is not a file")
    settings = _settings(args)
    # One process: inference gets every core (the config's `threads` is the serving per-worker
    # share); --threads overrides.
    det = load_configured(settings, workers=1, threads=args.threads or cpu_count())
    many = len(args.images) > 1
    for name in args.images:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image {path}: {exc.strerror}") from exc
        out = _out_path(args.out, path, many)
        start = time.perf_counter()
        try:
            decoded = imaging.decode_image(
                data, max_pixels=settings.max_pixels, target=None if out else det.input_size
            )
        except imaging.ImageError as exc:
            raise imaging.ImageError(f"{path}: {exc}") from exc
        decode_ms = (time.perf_counter() - start) * 1000
        detections = det.detect(decoded.image, original_size=decoded.size)
        total_ms = (time.perf_counter() - start) * 1000
        timing = {"decode": round(decode_ms, 1)}
        for key, value in (det.last_timing or {}).items():
            timing[key] = round(float(value), 1)
        timing["total"] = round(total_ms, 1)
        width, height = decoded.size
        result = {
            "image": str(path),
            "model": det.name,
            "engine": det.engine,
            "width": width,
            "height": height,
            "detections": [d.to_dict() for d in detections],
            "timing_ms": timing,
        }
        print(json.dumps(result) if args.json else _table(result), flush=True)
        if out:
            drawn = drawing.draw_detections(decoded.image, detections, in_place=True)
            out.write_bytes(drawing.encode_jpeg(drawn))
            if not args.json:
                print(f"  annotated image: {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """Build the OpenVINO cache of the configured model; one line per precision."""
    from detector.machine import cpu_count
    from detector.manifest import resolve_model
    from detector.model import openvino_cache
    from detector.model.engines import bf16_flag

    settings = _settings(args)
    if not openvino_cache.version():
        print("openvino is not installed: nothing to prepare (pip install openvino)")
        return 0
    if settings.engine not in ("auto", "openvino") and not args.precision:
        print(f"engine {settings.engine} needs no preparation")
        return 0
    precisions = args.precision or [settings.precision]
    if precisions == ["auto"]:  # what auto may pick: int8 only where NNCF can quantize here
        precisions = ["bf16" if bf16_flag() else "fp32"]
        if importlib.util.find_spec("nncf"):
            precisions.append("int8")
        else:
            print("openvino-int8: skipped: nncf is not installed (pip install nncf)")
    from detector.model.openvino_engine import prepare_models

    spec = resolve_model(settings)
    cache = settings.openvino_cache_dir or None
    results = prepare_models(spec.cfg, spec.weights, settings.size, precisions, cache, cpu_count())
    for label, how, built in results:
        print(f"{spec.name} {label}: {'built' if built else 'unchanged'}: {how}", flush=True)
    if settings.engine == "auto" and not args.precision:
        _prepare_auto_choice(settings, spec, openvino_cache.cache_root(spec.weights, cache))
    return 0


def _prepare_auto_choice(settings, spec, root) -> None:
    """Time auto's candidates as the service's workers will load them, and cache the choice.

    Same config, worker count and threads as runtime.ModelHolder: the workers then find the
    choice and load only the winner (without torch when OpenVINO wins), none times at start.
    "built" only when a choice file was written (one candidate alone is never timed or kept).
    """
    from detector.manifest import load_configured
    from detector.runtime import torch_threads
    from detector.runtime import worker_count

    def choices() -> dict:
        return {path.name: path.stat().st_mtime_ns for path in Path(root).glob("auto-*.json")}

    before = choices()
    detector = load_configured(
        settings, workers=worker_count(settings), threads=torch_threads(settings)
    )
    built = choices() != before
    reason = detector.engine_reason
    print(f"{spec.name} auto: {'built' if built else 'unchanged'}: {reason}", flush=True)


def _fetch(args: argparse.Namespace) -> int:
    """Fetch one model's weights into --dest and say whether anything changed."""
    from detector.fetch import fetch_weights
    from detector.manifest import load_manifest

    manifest = load_manifest(args.manifest) if args.manifest else None
    path, fetched = fetch_weights(
        args.name, args.dest, args.source, manifest=manifest, progress=not args.quiet
    )
    state = "fetched and verified" if fetched else "already present, verified"
    print(f"{path}: {state}")
    return 0


def _serve(argv: list[str]) -> int:
    """Hand the remaining arguments to the web server's own main()."""
    from detector import server

    return server.main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `detector` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv[:1] == ["serve"] or argv[:2] == ["--debug", "serve"]:
            return _serve(argv[argv.index("serve") + 1 :])  # the server sets up its own logging
        level = logging.INFO if debug else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        args = _parser().parse_args(argv)
        handler = {"detect": _detect, "fetch-weights": _fetch, "prepare": _prepare}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("detector: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line; --debug shows where
        if debug:
            traceback.print_exc()
        message = str(exc) or exc.__class__.__name__
        print(f"detector: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
