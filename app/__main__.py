"""`python -m app`: run the studio with uvicorn (host and port: flags or QES_HOST/QES_PORT)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.config import Settings
from app.main import create_app


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m app", description="Run Qwen Edit Studio.")
    parser.add_argument(
        "--host", default=settings.host, help="address to bind (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=settings.port, help="port (default %(default)s)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings.host, settings.port = args.host, args.port
    print(f"Qwen Edit Studio on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
