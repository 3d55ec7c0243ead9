"""``trustgain keys``: create, show and export keys."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import click

from trustgain.cli.common import emit, json_option, keyring_option, load_keyring, note
from trustgain.fileio import write_atomic
from trustgain.keys import (
    KeyRing,
    PublicKey,
    default_keyring_path,
    is_encrypted,
    permission_problem,
    public_key_path,
)


@click.group()
def keys() -> None:
    """Create, show and export the signing keyring."""


@keys.command()
@keyring_option
@click.option(
    "--encrypt/--no-encrypt",
    default=None,
    help="Protect the file with a passphrase (TRUSTGAIN_PASSPHRASE or a prompt). "
    "Default: encrypt when a passphrase is available.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file (its keys are lost).")
@json_option
def create(keyring_path: str | None, encrypt: bool | None, force: bool, as_json: bool) -> None:
    """Create a new keyring: a master secret and an Ed25519 signing key.

    \b
    Examples:
      trustgain keys create
      TRUSTGAIN_PASSPHRASE=... trustgain keys create --keyring team.json
      trustgain keys create --no-encrypt --json
    """
    path = Path(keyring_path) if keyring_path else default_keyring_path()
    passphrase = os.environ.get("TRUSTGAIN_PASSPHRASE") or None
    if encrypt is not False and passphrase is None and sys.stdin.isatty():
        passphrase = (
            click.prompt(
                "Passphrase (empty for none)",
                hide_input=True,
                confirmation_prompt=True,
                default="",
                show_default=False,
            )
            or None
        )
    if encrypt and passphrase is None:
        raise click.UsageError("--encrypt needs TRUSTGAIN_PASSPHRASE or a terminal to prompt on")
    if encrypt is False:
        passphrase = None
    ring = KeyRing.generate()
    ring.save(path, passphrase=passphrase, overwrite=force)
    if passphrase is None:
        note(f"warning: {path} is not passphrase-protected; keep it private (mode 0600)")
    info = _describe(path, ring.public_key)
    emit(
        info,
        as_json,
        f"created {path}\nkey id: {ring.key_id}\npublic key: {info['public_key_file']}",
    )


@keys.command()
@keyring_option
@json_option
def show(keyring_path: str | None, as_json: bool) -> None:
    """Show the keyring's key id, encryption and file mode (never a secret).

    \b
    Example:
      trustgain keys show --json
    """
    path = Path(keyring_path) if keyring_path else default_keyring_path()
    public = PublicKey.load(path) if path.exists() else None
    if public is None:
        load_keyring(str(path))  # raises the one-line "no key file" error with its hint
    info = _describe(path, public)
    problem = permission_problem(path)  # warned, not refused: the file is still yours to fix
    if problem:
        note(f"warning: {problem}")
    lines = [f"{k}: {v}" for k, v in info.items()]
    emit(info, as_json, "\n".join(lines))


@keys.command("export-public")
@keyring_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the PEM here instead of stdout.",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def export_public(keyring_path: str | None, output: str | None, force: bool) -> None:
    """Print the public key (PEM) that others use with `trustgain verify --public-key`.

    \b
    Examples:
      trustgain keys export-public > me.pem
      trustgain keys export-public -o me.pem
    """
    path = Path(keyring_path) if keyring_path else default_keyring_path()
    if not path.exists():
        load_keyring(str(path))
    pem = PublicKey.load(path).to_pem()
    if output:
        write_atomic(output, pem, overwrite=force)
        note(f"wrote {output}")
    else:
        click.echo(pem.decode(), nl=False)


def _describe(path: Path, public: PublicKey | None) -> dict[str, object]:
    assert public is not None
    return {
        "path": str(path),
        "key_id": public.key_id,
        "algorithm": "Ed25519",
        "encrypted": is_encrypted(path),
        "mode": oct(stat.S_IMODE(path.stat().st_mode)),
        "public_key_file": str(public_key_path(path)),
    }
