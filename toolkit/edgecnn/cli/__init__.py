"""The `edgecnn` command: thin click verbs that parse options and call the workflows and libraries below.

One module per verb group (training, export, bench and devices, watch, inspect); what they share is in
`common`. Heavy imports (torch) happen inside the verbs, so `edgecnn --help` stays fast and the runtime verbs
work without torch installed.
"""

from __future__ import annotations

import os
import sys

import click

from edgecnn import __version__
from edgecnn.cli.adopt import adopt
from edgecnn.cli.bench import bench, device
from edgecnn.cli.export import export_cmd
from edgecnn.cli.inspect import info, summary
from edgecnn.cli.label import label
from edgecnn.cli.training import eval_cmd, prune, run, train_cmd
from edgecnn.cli.watch import watch
from edgecnn.errors import EdgeCNNError, printable, shorten


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecnn")
def cli() -> None:
    """edgecnn: train compact image classifiers and detectors and ship them as verified int8 .tflite/.onnx files."""


for command in (run, train_cmd, eval_cmd, prune, export_cmd, bench, watch, summary, info, device, adopt, label):
    cli.add_command(command)


def main() -> None:
    """Entry point: one clear line and a non-zero exit for bad input, never a traceback."""
    sys.stdout.reconfigure(line_buffering=True)  # per-epoch rows reach a log file as they happen
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # `edgecnn` alone: the help, as --help shows it
        click.echo(e.ctx.get_help())
        sys.exit(e.exit_code)
    except click.UsageError as e:  # one line like every other error, not click's three
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx else ""
        # click lays some messages out over lines ("Choose from:\n\tclassify,\n\tdetect"): one line here.
        message = " ".join(line.strip() for line in e.format_message().splitlines())
        print(f"edgecnn: error: {printable(message)}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("edgecnn: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeCNNError as e:
        print(f"edgecnn: error: {printable(e)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("EDGECNN_DEBUG"):
            raise
        detail = printable(shorten(str(e)))
        print(f"edgecnn: internal error: {type(e).__name__}: {detail} (EDGECNN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
