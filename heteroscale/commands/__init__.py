"""CLI command groups. Each module imports `app` / `bench_app` from `heteroscale.cli` and adds
its commands with decorators; `heteroscale.cli` imports every module here at start-up."""
