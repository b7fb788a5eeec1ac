"""Entry point of the `heteroscale` console script (and `python -m heteroscale`).

The process settings the project needs (`models.settings.PREFECT_DEFAULTS`) are applied first,
before anything imports Prefect, so `.venv/bin/heteroscale` behaves the same from any directory
and without the Makefile's environment.
"""

from __future__ import annotations

from models.settings import apply_prefect_defaults


def main() -> None:
    apply_prefect_defaults()
    from heteroscale.cli import app  # late: Prefect reads its settings on import, after the defaults

    app()


if __name__ == "__main__":
    main()
