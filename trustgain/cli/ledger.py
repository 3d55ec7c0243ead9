"""``trustgain ledger``: create and read a dataset's privacy budget ledger."""

from __future__ import annotations

from dataclasses import asdict

import click

from trustgain.cli.common import emit, json_option


@click.group()
def ledger() -> None:
    """Privacy budget ledgers: one per dataset; DP fine-tunes and DP releases charge it.

    \b
    Examples:
      trustgain ledger create photos.ledger.json --dataset photos --epsilon 10 --delta 1e-5
      trustgain finetune --data photos/ --dp --target-epsilon 4 -o m --ledger photos.ledger.json
      trustgain ledger show photos.ledger.json
    """


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="Name of the dataset the budget protects.")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Total epsilon the dataset may spend.")
@click.option("--delta", type=click.FloatRange(0, 1, max_open=True), required=True,
              help="Total delta the dataset may spend (below 1 / number of records).")
@json_option
def create(path: str, dataset: str, epsilon: float, delta: float, as_json: bool) -> None:
    """Start a ledger at PATH (refuses to overwrite an existing file; written 0600).

    \b
    Example:
      trustgain ledger create photos.ledger.json --dataset photos --epsilon 10 --delta 1e-5
    """
    from trustgain.privacy.ledger import Ledger

    book = Ledger.create(path, dataset=dataset, epsilon=epsilon, delta=delta)
    emit({"path": str(book.path), "dataset": dataset, "budget": [epsilon, delta]}, as_json,
         f"ledger {book.path}: dataset {dataset!r}, budget epsilon {epsilon:g}, delta {delta:g}")


@ledger.command()
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
def show(path: str, as_json: bool) -> None:
    """Print the budget, every spend and what remains.

    \b
    Examples:
      trustgain ledger show photos.ledger.json
      trustgain ledger show photos.ledger.json --json
    """
    from trustgain.privacy.ledger import Ledger

    book = Ledger(path)
    (be, bd), (se, sd), (re_, rd) = book.budget(), book.spent(), book.remaining()
    spends = book.spends()
    lines = [f"dataset {book.dataset!r}: budget epsilon {be:g} delta {bd:g}"]
    lines += [f"  {s.time}  {s.what}: epsilon {s.epsilon:.4g} delta {s.delta:.3g} ({s.accountant})"
              for s in spends]
    lines.append(f"spent epsilon {se:.4g} delta {sd:.3g}; remaining epsilon {re_:.4g} "
                 f"delta {rd:.3g}")
    emit({"dataset": book.dataset, "budget": [be, bd], "spent": [se, sd],
          "remaining": [re_, rd], "spends": [asdict(s) for s in spends]}, as_json, "\n".join(lines))
