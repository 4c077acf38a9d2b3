"""`edge-gateway run`: the gateway in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

from gateway.cli.common import fail, load_config, setup_logging
from gateway.cli.options import ConfigOption


def run(config: ConfigOption = None) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C."""
    import asyncio
    import signal

    from gateway.app import Gateway
    from gateway.errors import GatewayError

    try:
        cfg = load_config(config)
    except GatewayError as exc:
        raise fail(str(exc)) from None
    setup_logging(
        cfg.log_level, cfg.logging.format, cfg.logging.repeat_window, cfg.logging.repeat_burst
    )
    import logging

    for warning in cfg.warnings():
        logging.getLogger("gateway.config").warning("config: %s", warning)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    try:
        asyncio.run(main())
    except GatewayError as exc:
        raise fail(str(exc)) from None
