"""The ``workshops`` hub-managed service: a clock that asks the hub, every few seconds, to
end the workshops that are over and pre-pull the images of those starting soon.

    python -m deskhub.workshops.checker --interval 5

The hub starts it with ``JUPYTERHUB_API_TOKEN`` and ``JUPYTERHUB_API_URL``; its only scope
is ``custom:deskhub:workshops:check`` (it can call the check, nothing else). The work itself
runs in the hub, which holds the workshops.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

log = logging.getLogger("deskhub.workshops.checker")


def check_once(api_url: str, token: str, timeout: float = 30) -> None:
    request = urllib.request.Request(
        f"{api_url.rstrip('/')}/workshops-check",
        data=b"",
        method="POST",
        headers={"Authorization": f"token {token}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deskhub.workshops.checker")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between checks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s workshops] %(message)s"
    )
    api_url, token = os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    failing = False
    while True:
        try:
            check_once(api_url, token)
        except (OSError, urllib.error.URLError) as err:
            if not failing:  # once per outage, not every few seconds
                log.warning("the hub did not answer the workshops check: %s", err)
            failing = True
        else:
            if failing:
                log.info("the hub answers the workshops check again")
            failing = False
        time.sleep(args.interval)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the hub stops its services with SIGINT
        sys.exit(0)
