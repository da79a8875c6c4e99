"""runferry's engine: configuration, the pipeline, the ledger, progress and the CLI."""
