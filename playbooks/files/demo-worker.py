#!/usr/bin/env python3
"""The demo worker: reads its config once, writes a heartbeat line every few seconds."""

import os
import signal
import sys
import time


def read_config(path: str) -> dict[str, str]:
    conf = {}
    with open(path) as fh:
        for line in fh:
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                conf[key.strip()] = value.strip()
    return conf


def main() -> int:
    conf = read_config(sys.argv[sys.argv.index("--config") + 1])
    interval = float(conf.get("interval", "2"))
    heartbeat = os.environ.get("DEMO_HEARTBEAT", "heartbeat")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo worker {os.getpid()} started: {conf.get('greeting', '')}", flush=True)
    while True:
        with open(heartbeat, "w") as fh:
            fh.write(f"{time.time():.0f} {conf.get('greeting', '')}\n")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
