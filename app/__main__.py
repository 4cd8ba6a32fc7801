"""`python -m app`: validate settings (one line on error), then serve with uvicorn."""

from __future__ import annotations

import sys


def main() -> int:
    from app.config import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"upscaler: {exc}", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    # The service's own loggers (model loading, fallbacks) beside uvicorn's.
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")

    from app.main import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
