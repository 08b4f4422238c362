"""`detector serve`: run the app under gunicorn with detector.gunicorn_conf."""

from __future__ import annotations

import argparse
import os
import sys

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    """gunicorn embedded: settings from detector.gunicorn_conf, app built in each worker."""

    def load_config(self) -> None:
        from detector import gunicorn_conf

        for key in dir(gunicorn_conf):
            if key in self.cfg.settings and not key.startswith("_"):
                value = getattr(gunicorn_conf, key)
                if value is not None:
                    self.cfg.set(key, value)

    def load(self):
        from detector.app import create_app

        return create_app()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `detector serve`."""
    from detector.cli import DeprecatedAlias
    from detector.cli import add_version

    parser = argparse.ArgumentParser(
        prog="detector serve",
        description="Serve the detector with gunicorn (loopback or unix socket; nginx in front).",
    )
    add_version(parser)
    parser.add_argument("--config", help="detector TOML file (default: $DETECTOR_CONFIG)")
    parser.add_argument("--bind", help="HOST:PORT on loopback or unix:PATH (config: bind)")
    parser.add_argument("--workers", type=int, help="worker processes (config: workers; 0=auto)")
    parser.add_argument(
        "--request-threads",
        dest="request_threads",
        type=int,
        help="request threads per worker (config: worker_threads; 0=auto)",
    )
    parser.add_argument(
        "--threads",
        dest="request_threads",
        type=int,
        action=DeprecatedAlias,
        replacement="--request-threads",
    )
    parser.add_argument(
        "--inference-threads",
        type=int,
        help="inference threads per worker (config: threads; 0=cores / workers)",
    )
    parser.add_argument(
        "--allow-public", action="store_true", help="allow a non-loopback bind (not for prod)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run gunicorn until it is stopped; return its exit status."""
    args = build_parser().parse_args(argv)
    # Options become DETECTOR_* overrides so gunicorn_conf and each worker's app read the same.
    if args.config:
        os.environ["DETECTOR_CONFIG"] = args.config
    for name, value in (
        ("BIND", args.bind),
        ("WORKERS", args.workers),
        ("WORKER_THREADS", args.request_threads),
        ("THREADS", args.inference_threads),
    ):
        if value is not None:
            os.environ[f"DETECTOR_{name}"] = str(value)
    if args.allow_public:
        os.environ["DETECTOR_ALLOW_PUBLIC_BIND"] = "1"
    try:
        _preflight()
    except (ValueError, OSError) as exc:
        print(f"detector serve: {exc}", file=sys.stderr)
        return 2
    try:
        _Gunicorn().run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _preflight() -> None:
    """Fail before forking: bad config, public bind, or missing model files."""
    from detector import config as config_module
    from detector.gunicorn_conf import check_bind
    from detector.manifest import resolve_model

    config = config_module.load()
    check_bind(config.bind, os.environ.get("DETECTOR_ALLOW_PUBLIC_BIND") == "1")
    spec = resolve_model(config)
    for path in (spec.cfg, spec.weights, spec.names):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"model file {path} is missing; run `detector fetch-weights {spec.name}` "
                "or set weights_dir"
            )


if __name__ == "__main__":
    sys.exit(main())
