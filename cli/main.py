"""`skiporacle`'s entry point: parse, refuse a device not usable here, run the command from one table.

Bad input of any kind ends with one line on stderr and exit code 2; a run stopped through no fault of its
input (RunStopped) with one line and exit code 1.  Every command that runs a model takes
`--device auto|cpu|cuda[:N]` (see skiporacle.eval.device).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from skiporacle.cli import (controller_commands, drafts_command, export_command, generate_command, heal_command,
                            model_commands, run_folder_commands, savings_command)
from skiporacle.cli.parsers import build_parser
from skiporacle.cli.run_settings import placement_of
from skiporacle.data.errors import BadInput, RunStopped

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": generate_command.generate,
    "oracle": model_commands.oracle,
    "rank": model_commands.rank,
    "heal": heal_command.heal,
    "heal-family": heal_command.heal_family,
    "controller": controller_commands.controller,
    "pertoken": controller_commands.pertoken,
    "plausibility": run_folder_commands.plausibility,
    "perplexity": run_folder_commands.perplexity,
    "dump": run_folder_commands.dump,
    "curves": run_folder_commands.curves,
    "report": run_folder_commands.report,
    "compare": run_folder_commands.compare,
    "export": export_command.export,
    "drafts": drafts_command.drafts,
    "savings": savings_command.savings,
    "savings-table": savings_command.savings_table,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "device"):
            placement_of(args)  # a device not usable here is refused before any work
        return COMMANDS[args.command](args)
    except BadInput as err:
        print(f"skiporacle: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"skiporacle: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("skiporacle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
