"""The ``trustgain`` entry point and its one error funnel."""

from __future__ import annotations

import os
import sys

import click

from trustgain import __version__
from trustgain.cli.audit import audit
from trustgain.cli.c2pa import c2pa
from trustgain.cli.finetune import finetune
from trustgain.cli.generate import generate
from trustgain.cli.generate_text import generate_text
from trustgain.cli.keys import keys
from trustgain.cli.ledger import ledger
from trustgain.cli.prompt_policy import prompt_policy
from trustgain.cli.protect import protect, recover
from trustgain.cli.stages import stages
from trustgain.cli.verify import verify
from trustgain.cli.watermark import watermark
from trustgain.cli.watermark_latent import detect_latent_cmd
from trustgain.cli.watermark_text import detect_text_cmd
from trustgain.errors import OutputExistsError, TrustgainError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trustgain")
def cli() -> None:
    """trustgain: trust stages around AI generation, sealed by signed provenance.

    \b
    Start:
      trustgain keys create                  # your signing keyring
      trustgain generate "a handwritten seven" --model MODEL -o seven.png
      trustgain generate-text "Describe a lighthouse" -o dusk.txt   # a language model
      trustgain verify seven.png
      trustgain protect photos/ -o protected/      # reversible protection (recover restores)
      trustgain finetune --data mine/ --dp --target-epsilon 8 -o my-model
    Environment: TRUSTGAIN_HOME (keys, default ~/.trustgain), TRUSTGAIN_PASSPHRASE,
    TRUSTGAIN_NO_PROGRESS=1, TRUSTGAIN_DEBUG=1 (tracebacks).
    """


cli.add_command(keys)
cli.add_command(verify)
cli.add_command(c2pa)
cli.add_command(generate)
cli.add_command(generate_text)
cli.add_command(stages)
cli.add_command(watermark)
watermark.add_command(detect_latent_cmd)
watermark.add_command(detect_text_cmd)
cli.add_command(protect)
cli.add_command(recover)
cli.add_command(finetune)
cli.add_command(audit)
cli.add_command(ledger)
cli.add_command(prompt_policy)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: known errors become one line plus a hint on stderr and exit code 1."""
    if os.environ.get("TRUSTGAIN_DEBUG") != "1":  # library chatter is not the user's business
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        cli.main(args=argv, prog_name="trustgain", standalone_mode=False)
    except TrustgainError as exc:
        if os.environ.get("TRUSTGAIN_DEBUG") == "1":
            raise
        click.echo(f"error: {exc}", err=True)
        hint = exc.hint
        if isinstance(exc, OutputExistsError):  # the library's hint names the Python argument
            hint = "choose another path, or pass --force to replace it"
        if hint:
            click.echo(f"hint: {hint}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
