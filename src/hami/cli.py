"""`hami …`: one entry point, one module per subcommand (loaded only when used)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import io
import sys

from hami.errors import HamiError

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "schedule": ("hami.commands.schedule", "schedule pending pods of a cluster snapshot with the engine"),
    "simulate": ("hami.sim.command", "replay GPU-cluster traces through the engine and compare policies"),
    "scheduler": ("hami.commands.scheduler", "run the kube-scheduler extender and the admission webhook"),
    "webhook": ("hami.commands.webhook", "run the mutating admission webhook alone"),
    "device-plugin": ("hami.deviceplugin.command", "run a node's device plugin (NVIDIA, Ascend, Hygon or AMD)"),
    "monitor": ("hami.commands.monitor", "run the node monitor: GPU metrics, task priority, resizes, cleanup"),
    "ui": ("hami.commands.ui", "serve the web UI: devices, pods, why pending, what if, simulator reports"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hami", description="HAMi-compatible GPU sharing for Kubernetes")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A crash in native code (a segfault) then leaves every thread's Python stack in the log.
    # (Not possible when stderr is not a real file, as under a test's output capture.)
    with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
        faulthandler.enable()
    args = build_parser().parse_args(argv)
    try:
        result: int = importlib.import_module(args._module).run(args)
        return result
    except HamiError as exc:
        print(f"hami {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hami {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
