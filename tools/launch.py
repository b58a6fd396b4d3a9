#!/usr/bin/env python
"""Run a command as an MXNet parameter-server job: a scheduler, servers and N workers, here (127.0.0.1)
or on ssh hosts. Example (README, "Several machines"):

    python tools/launch.py -n 2 -- python train.py --kvstore dist_sync --data-dir dataset/utkface
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser, number, COUNT, POSITIVE  # noqa: E402
from agegender.errors import UserError, read_text, run_cli  # noqa: E402
from agegender.model.launch import REMOTE_PORT, JobError, check_host, launch  # noqa: E402


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--num-workers", type=COUNT, required=True, help="worker processes")
    p.add_argument("-s", "--num-servers", type=COUNT, default=1, help="server processes")
    p.add_argument("-H", "--hostfile", help="one ssh host per line; scheduler on the first (default: all here)")
    p.add_argument("--port", type=number(int, 0, 65535), default=0,
                   help=f"scheduler port (default: a free one here; {REMOTE_PORT} with -H, where a port free on this "
                        "machine says nothing about the first host)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter of the servers and of a worker command starting with `python` (on every host)")
    p.add_argument("--timeout", type=POSITIVE, default=None, help="stop everything after this many seconds")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the worker command")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("no command given: tools/launch.py -n 2 -- python train.py --kvstore dist_sync ...")
    if args.num_workers < 1 or args.num_servers < 1:
        raise UserError("--num-workers and --num-servers must be at least 1")
    hosts = []
    if args.hostfile:
        if not os.path.isfile(args.hostfile):
            raise UserError(f"host file not found: {args.hostfile}")
        hosts = [h.strip() for h in read_text(args.hostfile, "host file").split("\n")
                 if h.strip() and not h.startswith("#")]
        for host in hosts:
            try:
                check_host(host)
            except ValueError as exc:
                raise UserError(f"{args.hostfile}: {exc} (one host name, IP or user@host per line)") from None
    try:
        codes = launch(command, args.num_workers, args.num_servers, hosts, args.port, args.timeout, os.getcwd(),
                       python=args.python)
    except (TimeoutError, JobError) as exc:
        raise UserError(f"job stopped: {exc}") from None
    except FileNotFoundError as exc:  # no ssh, or a --python / command that does not exist here
        raise UserError(f"cannot start {exc.filename}: not found") from None
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"error: a worker exited with code {bad[0]}; the job was stopped", file=sys.stderr)
        return bad[0]
    return 0


if __name__ == "__main__":
    run_cli(main)
