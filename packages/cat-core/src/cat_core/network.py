"""Whether a host answers, asked with a bounded wait: cat_core's dataset download and cat-apps'
hub checks use it to fail with a clear message instead of hanging on a machine without network.
Standard library only, so that the command-line checks stay cheap."""

from __future__ import annotations

import socket
import threading

__all__ = ["reachable"]


def reachable(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    # DNS resolution ignores socket timeouts, hence the thread.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)
