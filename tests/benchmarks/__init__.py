"""`make bench`: the performance benchmark of cryptoflow (not a test suite; pytest does not collect it).

    make bench                                  # defaults: 1,000,000 rows, 10 s per read target
    make bench ARGS="--rows 10000000"           # the big run
    make bench ARGS="--rows 50000 --duration 3" # a quick check that the benchmark works

Modules: generate (deterministic CSV), ingest (real ingestion path vs COPY floors, Celery),
reads (gunicorn under load vs bare SQL), loadgen (the HTTP load generator, its own process),
report (table, JSON, Markdown), procs (servers, databases, child processes), run (the orchestration).
`make soak` (storage over simulated days, and the reads at that size): soak, soak_db, soak_reads.
"""
