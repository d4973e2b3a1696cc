"""`opsagent server`: run the collector, and manage the hosts' tokens (the arguments are
defined in agent.cli, so `opsagent validate` never imports the collector)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def _store(db: str) -> Any:
    from agent.collector.store import Store

    if "://" not in db:
        os.makedirs(os.path.dirname(os.path.abspath(db)), mode=0o700, exist_ok=True)
    return Store(db)


def cmd_token(args: argparse.Namespace) -> int:
    import datetime as dt

    from agent.collector.store import StoreError

    store = _store(args.db)
    try:
        if args.token_verb == "add":
            print(store.add_token(args.host))
        elif args.token_verb == "revoke":
            n = store.revoke_tokens(args.host)
            print(f"{args.host}: {n} token{'s' if n != 1 else ''} revoked", file=sys.stderr)
            return 0 if n else 4
        else:
            for t in store.list_tokens():
                made = dt.datetime.fromtimestamp(t["created_at"], dt.UTC).isoformat(
                    timespec="seconds")
                state = "revoked" if t["revoked_at"] else "active"
                print(f"{t['host']}\t{t['hash']}…\t{made}\t{state}")
    except StoreError as e:
        print(f"opsagent: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import uvicorn

    from agent.playbook.types import parse_duration

    try:
        host, port = _split_listen(args.listen)
        stale = parse_duration(args.stale_after)
    except ValueError as e:
        print(f"opsagent: {e}", file=sys.stderr)
        return 2
    store = _store(args.db)  # migrates once, before any worker starts
    store.close()
    os.environ["OPSAGENT_COLLECTOR_DB"] = args.db
    os.environ["OPSAGENT_STALE_AFTER"] = str(stale)
    tls: dict[str, Any] = {}
    if args.tls_cert:
        import ssl

        tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
        if args.tls_client_ca:
            tls.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    scheme = "https" if tls else "http"
    print(f"opsagent collector on {scheme}://{args.listen}/ (dashboard), "
          f"{scheme}://{args.listen}/api/v1, db {_masked(args.db)}", file=sys.stderr, flush=True)
    uvicorn.run("agent.collector.app:app_from_env", factory=True, host=host, port=port,
                workers=max(1, args.workers), log_level="warning", access_log=False,
                server_header=False, timeout_graceful_shutdown=10, **tls)
    return 0


def _masked(db: str) -> str:
    """The URL without its password, for logs."""
    if "://" in db and "@" in db:
        scheme, rest = db.split("://", 1)
        cred, at = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{at}"
    return db
