"""The tools around the Lambda functions: the `rotation` command line, the demo, repair, and the local
PostgreSQL / Secrets Manager infrastructure used by the tests and the benchmarks.

Nothing here runs in Lambda: the artifact is built from the `rotation` package alone, which never imports
this one.
"""
